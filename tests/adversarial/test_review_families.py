"""Review: near-misses of the 1-Lipschitz family pattern passes, each checked against an oracle.

A pattern pass claims "this subgraph is exactly structure S, hence its constant is <= c". Each model here
looks like S but is not (or is S in an unusual form); lipgraph's bound must stay >= the true constant.

Oracles (independent of lipgraph's rules, all from ONNX Runtime's outputs):
* ``exact_norm``: the dense matrix of a linear model (a sandwich whose activation is LeakyRelu(alpha=1),
  i.e. the identity, is linear) and its SVD;
* ``region_oracle``: for a dense ReLU sandwich with ``h <= n`` hidden units and Q of full row rank every
  sign pattern of ``Q x + b`` is a nonempty region, and the Lipschitz constant of the (continuous,
  piecewise-linear) block is the largest Jacobian norm over them: one central-difference Jacobian at a
  point inside each region (ONNX Runtime, float64);
* ``lower_estimate`` (tests/adversarial/oracle.py) where neither applies.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.errors import LipgraphError
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from tests.adversarial.oracle import lower_estimate, sound
from tests.helpers.onnx_oracle import exact_norm, make_model, runner, to_float64

Mutation = Callable[[list[onnx.NodeProto], dict[str, np.ndarray]], None]


def _bound(model: onnx.ModelProto) -> float | None:
    """lipgraph's bound, or None when it refuses (always sound)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return analyze(model).bound
        except LipgraphError:
            return None


def _ops(model: onnx.ModelProto) -> list[str]:
    g = build_graph(model)
    run_passes(g)
    return [n.op_type for n in g.nodes]


def _replace(nodes: list[onnx.NodeProto], name: str, new: list[onnx.NodeProto]) -> None:
    i = next(k for k, n in enumerate(nodes) if n.name == name)
    nodes[i : i + 1] = new


def _assert_sound(bound: float | None, truth: float, label: str) -> None:
    if bound is None:
        return
    assert bound >= truth * (1 - 1e-6), (label, bound, truth)


def region_oracle(model: onnx.ModelProto, q: np.ndarray, b: np.ndarray, shape: list[int]) -> float:
    """Largest Jacobian norm over the sign regions of ``q x + b`` (``q`` h x n of full row rank, ReLU)."""
    f = runner(to_float64(model))
    n = int(np.prod(shape))
    q = np.asarray(q, np.float64)
    best, step = 0.0, 1e-5
    for signs in itertools.product([-1.0, 1.0], repeat=q.shape[0]):
        x = np.linalg.lstsq(q, np.array(signs) - b, rcond=None)[0]  # q x + b = +-1: inside the region
        assert np.allclose(q @ x + b, signs, atol=1e-9)
        cols = []
        for j in range(n):
            e = np.zeros(n)
            e[j] = step
            hi, lo = f({"x": (x + e).reshape(shape)})[0], f({"x": (x - e).reshape(shape)})[0]
            cols.append((hi - lo).ravel() / (2 * step))
        jac = np.stack(cols, axis=1)
        if not np.all(np.isfinite(jac)):
            return float("inf")
        best = max(best, float(np.linalg.svd(jac, compute_uv=False)[0]))
    return best


# ------------------------------------------------------------------ linear maps: batch-axis broadcasting


def _broadcast_in_chain(op: str, cshape: tuple[int, ...]) -> onnx.ModelProto:
    """MatMul -> op(constant of shape cshape) -> MatMul on x of shape (1, 4): a batch-1 model in which a
    constant whose axis 0 is 4 copies the sample 4 times (the output is (4, 4))."""
    rng = np.random.default_rng(5)
    inits = {
        "w1": rng.standard_normal((4, 4)).astype(np.float32),
        "w2": rng.standard_normal((4, 4)).astype(np.float32),
        "c": rng.uniform(0.5, 2.0, cshape).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"]),
        helper.make_node(op, ["a", "c"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], ["y"]),
    ]
    return make_model(nodes, [("x", [1, 4])], ["y"], inits)


@pytest.mark.parametrize(
    "op,cshape", [("Mul", (4, 4)), ("Mul", (4, 1)), ("Div", (4, 1)), ("Add", (4, 4)), ("Mul", (3, 4)), ("Mul", (1, 4))]
)
def test_linear_map_constant_broadcasting_over_the_batch_axis(op: str, cshape: tuple[int, ...]) -> None:
    # The composition pushes the 4 basis vectors through on axis 0, the model's batch axis: a constant
    # whose axis 0 has the basis's size (4) paired with it silently, mixing basis vectors with the
    # constant's rows, and the 16-output map was certified as a 4 x 4 one (2x to 2.5x below the truth).
    model = _broadcast_in_chain(op, cshape)
    _assert_sound(_bound(model), exact_norm(model, [1, 4]), f"{op}{cshape}")
