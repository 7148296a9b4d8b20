"""L2-pooling recognition: torch's Pow/AveragePool/Sign/Abs/Relu/Mul/Mul/Pow chain becomes LpPool(p=2).

Oracles: the rewritten graph (LpPool run by onnxruntime) gives the model's outputs; the bound is >=
a Jacobian-norm lower estimate; near misses are not rewritten, so the Pow rule refuses the model.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.graph_build import build_graph
from lipgraph.passes.lppool import recognise_l2_pooling
from tests.helpers.onnx_oracle import make_model, max_jacobian_norm, runner
from tests.passes.graphio import graph_to_model, op_types

SHAPE = (1, 2, 4, 4)
F32 = np.float32


def _chain(p_in=2.0, p_out=0.5, mult=4.0, pool=None, sign_block=True, root="Pow", sign_src="a"):
    pool = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0], "count_include_pad": 1,
            "ceil_mode": 0} | (pool or {})
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]), helper.make_node("AveragePool", ["sq"], ["a"], **pool)]
    cur = "a"
    if sign_block:
        nodes += [helper.make_node("Sign", [sign_src], ["sg"]), helper.make_node("Abs", ["a"], ["ab"]),
                  helper.make_node("Relu", ["ab"], ["rl"]), helper.make_node("Mul", ["sg", "rl"], ["m"])]
        cur = "m"
    if mult is not None:
        nodes.append(helper.make_node("Mul", [cur, "k"], ["mk"]))
        cur = "mk"
    if root == "Pow":
        nodes.append(helper.make_node("Pow", [cur, "half"], ["y"]))
    else:
        nodes.append(helper.make_node("Sqrt", [cur], ["y"]))
    inits = {"two": np.array(p_in, F32), "half": np.array(p_out, F32), "k": np.array(mult or 1.0, F32)}
    return make_model(nodes, [("x", SHAPE)], ["y"], inits, opset=17)


def _rewritten(model):
    g = build_graph(model)
    recognise_l2_pooling(g)
    g.prune_to_output()
    return g


def _same(model, g) -> None:
    rng = np.random.default_rng(3)
    a, b = runner(model), runner(graph_to_model(g))
    for _ in range(3):
        x = rng.standard_normal(SHAPE).astype(F32)
        np.testing.assert_allclose(b({"x": x})[0], a({"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "ops"),
    [
        pytest.param({}, ["LpPool"], id="torch-lppool2d"),
        pytest.param({"pool": {"strides": [1, 1], "pads": [1, 1, 1, 1]}}, ["LpPool"], id="overlap-padded"),
        pytest.param({"mult": 9.0}, ["LpPool", "Mul"], id="scaled"),
        pytest.param({"sign_block": False, "mult": None, "root": "Sqrt"}, ["LpPool", "Mul"], id="sqrt-of-mean"),
    ],
)
def test_chain_becomes_lppool(kwargs, ops) -> None:
    m = _chain(**kwargs)
    g = _rewritten(m)
    assert op_types(g) == ops
    lp = g.nodes[0]
    assert lp.attrs["p"] == 2 and lp.attrs["kernel_shape"] == [2, 2] and len(lp.origin) >= 3
    _same(m, g)
    bound = analyze(m).bound
    lower = max_jacobian_norm(m, SHAPE, n_points=3)
    assert bound >= lower * (1 - 1e-6)
    if kwargs == {}:
        assert bound == pytest.approx(1.0, rel=1e-9)  # non-overlapping windows: exactly 1


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"p_in": 3.0}, id="cube"),
        pytest.param({"p_out": 0.25}, id="fourth-root"),
        pytest.param({"mult": -4.0}, id="negative-multiplier"),
        # Border divisors and ceil_mode are no LpPool but a lipgraph:PowerMeanPool now
        # (tests/passes/test_power_mean_pool.py).
        pytest.param({"sign_src": "sq"}, id="sign-of-other-tensor"),
    ],
)
def test_near_miss_is_left_alone_and_refused(kwargs) -> None:
    m = _chain(**kwargs)
    assert "LpPool" not in op_types(_rewritten(m))
    with pytest.raises(UnsupportedModelError):
        analyze(m)
