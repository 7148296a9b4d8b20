"""Property: on random small DAGs of supported ops, lipgraph's bound is never below the network's
true Lipschitz constant, as estimated from below by float64 secant ratios along the top singular
direction of the Jacobian at random points (SPEC sec. 9).

Runs derandomized (a fixed example sequence, no example database) so CI is reproducible.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import helper

from lipgraph import analyze
from lipgraph.errors import UnsupportedModelError
from tests.property.dags import DOUBLE, OPSET, Net, lower_estimate, nets

_COMMON = dict(deadline=None, derandomize=True, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

# Float64 secants carry an absolute error of about 1e-16 * |f| / step: far below these allowances.
REL, ABS = 1e-7, 1e-8


def check(net: Net) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a = analyze(net.model)
        except UnsupportedModelError as exc:  # every op drawn has a rule: a refusal is a bug too
            pytest.fail(f"refused a model of supported ops: {exc}")
    assert math.isfinite(a.bound) and a.bound >= 0, a.bound
    low = lower_estimate(net, seed=len(net.layers))
    assert a.bound >= low * (1 - REL) - ABS, (
        f"UNSOUND: bound {a.bound!r} < lower estimate {low!r}\n"
        + "\n".join(f"  {n.name} {n.op_type}: {n.bound} ({n.method})" for n in a.nodes)
    )


@settings(max_examples=300, **_COMMON)
@given(nets())
def test_bound_above_jacobian_norm(net: Net) -> None:
    check(net)


@pytest.mark.slow
@settings(max_examples=1500, **_COMMON)
@given(nets(max_layers=7, max_side=7))
def test_bound_above_jacobian_norm_many(net: Net) -> None:
    check(net)


# ---------------------------------------------------------------------------- the oracle has teeth
def _one(op: str, x_shape: tuple[int, ...], inits: dict[str, np.ndarray] | None = None, **attrs: object) -> Net:
    from onnx import numpy_helper

    inits = inits or {}
    node = helper.make_node(op, ["x", *inits], ["y"], **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", DOUBLE, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", DOUBLE, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return Net(model, x_shape, [op])


def test_oracle_catches_overlapping_maxpool_labelled_1() -> None:
    """The published mistake "max pooling is 1-Lipschitz" (SPEC sec. 4, k=2, s=1) would be caught:
    the lower estimate is well above 1, and lipgraph's bound is above the estimate."""
    net = _one("MaxPool", (1, 1, 1, 5), kernel_shape=[1, 2], strides=[1, 1])
    low = lower_estimate(net, n_points=6)
    assert low > 1.2, low
    assert analyze(net.model).bound >= low * (1 - REL)


def test_oracle_catches_same_grid_circular_norm() -> None:
    """The circular norm on the input's own grid is NOT a bound for zero padding (SPEC sec. 4:
    kernel [1, -1], n = 3, pad 1: 1.732 against a true 1.848): the oracle sees the difference."""
    w = np.array([1.0, -1.0]).reshape(1, 1, 1, 2)
    net = _one("Conv", (1, 1, 1, 3), {"w": w}, pads=[0, 1, 0, 1])
    low = lower_estimate(net, n_points=2)
    assert low > math.sqrt(3) + 0.05, low  # a linear map: the secant along the top direction is its norm
    assert analyze(net.model).bound >= low * (1 - REL)
