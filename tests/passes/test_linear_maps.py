"""Linear sub-DAGs composed into one map (lipgraph/passes/linear_maps.py + the LinearMap rule).

Oracle: the dense matrix of the whole ONNX model (affine models: basis vectors through onnxruntime in
float64) and its SVD. A composed region must give exactly that norm; near-misses (nonlinearity between,
an intermediate read elsewhere, a Slice keeping everything) must stay sound, and the fan-out branch keeps
its own bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from tests.helpers.onnx_oracle import exact_norm, make_model

REL = 1e-9
ORACLE = 1e-6  # onnxruntime runs Conv in float32 only: the dense oracle itself is float32 there
RNG = np.random.default_rng(7)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def _ops(model) -> list[str]:
    g = build_graph(model, None, None)
    run_passes(g)
    return [n.op_type for n in g.nodes]


def matmul_chain():
    """LBDN-style head ``2 A^T B x``: MatMul -> Mul(2) -> MatMul."""
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"]),
        helper.make_node("Mul", ["h", "two"], ["h2"]),
        helper.make_node("MatMul", ["h2", "B"], ["y"]),
    ]
    inits = {"A": _w(12, 8), "B": _w(8, 5), "two": np.array(2.0, dtype=np.float32)}
    return make_model(nodes, [("x", (1, 12))], ["y"], inits), (1, 12)


def gemm_slice(keep: int = 4):
    """A Gemm with 10 outputs of which a Slice keeps the first ``keep`` (the "first channels" head)."""
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
        helper.make_node("Slice", ["h", "st", "en", "ax"], ["y"]),
    ]
    inits = {"W": _w(10, 6), "b": _w(10), "st": _i64(0), "en": _i64(keep), "ax": _i64(1)}
    return make_model(nodes, [("x", (1, 6))], ["y"], inits), (1, 6)


def add_branches(op: str = "Add"):
    """Two linear branches of one input joined: W1 x +/- (W2 x reshaped and transposed back)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"]),
        helper.make_node("MatMul", ["x", "W2"], ["b0"]),
        helper.make_node("Reshape", ["b0", "s"], ["b1"]),
        helper.make_node("Transpose", ["b1"], ["b2"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["b2"], ["b3"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["b3", "s2"], ["b"]),
        helper.make_node(op, ["a", "b"], ["y"]),
    ]
    inits = {"W1": _w(8, 6), "W2": _w(8, 6), "s": _i64(1, 2, 3), "s2": _i64(1, 6)}
    return make_model(nodes, [("x", (1, 8))], ["y"], inits), (1, 8)


def conv_conv(pads=(1, 1, 1, 1), stride=1):
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["h"], kernel_shape=[3, 3], pads=list(pads)),
        helper.make_node("Conv", ["h", "W2"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride] * 2),
    ]
    inits = {"W1": _w(3, 2, 3, 3), "b1": _w(3), "W2": _w(2, 3, 3, 3)}
    return make_model(nodes, [("x", (1, 2, 5, 5))], ["y"], inits), (1, 2, 5, 5)


@pytest.mark.parametrize(
    "build",
    [
        matmul_chain,
        gemm_slice,
        add_branches,
        lambda: add_branches("Sub"),
        conv_conv,
        lambda: conv_conv((0, 1, 1, 0), 2),
    ],
    ids=["matmul-matmul", "gemm-slice", "add-branches", "sub-branches", "conv-conv", "conv-conv-stride2"],
)
def test_region_is_composed_exactly(build) -> None:
    model, shape = build()
    assert "LinearMap" in _ops(model)
    truth = exact_norm(model, shape)
    bound = analyze(model).bound
    assert truth * (1 - ORACLE) <= bound <= truth * (1 + ORACLE), (bound, truth)


def test_composition_beats_the_product() -> None:
    """The point of the pass: ``||A B||`` is below ``||A|| ||B||`` for generic matrices."""
    model, shape = matmul_chain()
    nodes = analyze(model).nodes
    assert [n.op_type for n in nodes] == ["LinearMap"]
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    product = 2 * np.linalg.norm(w["A"], 2) * np.linalg.norm(w["B"], 2)
    assert nodes[0].bound < product * 0.99


def test_slice_keeping_every_row_is_exact_too() -> None:
    """Near-miss of the head: a Slice that keeps all 10 rows gives ||W||, the plain Gemm norm."""
    model, shape = gemm_slice(keep=10)
    bound = analyze(model).bound
    truth = exact_norm(model, shape)
    assert truth * (1 - REL) <= bound <= truth * (1 + REL)


def test_nonlinearity_between_is_not_composed() -> None:
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "B"], ["y"]),
    ]
    a, b = _w(6, 6), _w(6, 4)
    model = make_model(nodes, [("x", (1, 6))], ["y"], {"A": a, "B": b})
    assert "LinearMap" not in _ops(model)
    bound = analyze(model).bound
    product = np.linalg.norm(a.astype(np.float64), 2) * np.linalg.norm(b.astype(np.float64), 2)
    assert bound == pytest.approx(product, rel=1e-9)


def test_fan_out_keeps_the_branch_bound() -> None:
    """h = A x feeds both B (linear) and a Relu branch: h must keep its own bound; the region after h
    may compose, but A is not merged into it (its output is read elsewhere)."""
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"]),
        helper.make_node("MatMul", ["h", "B"], ["u"]),
        helper.make_node("Slice", ["u", "st", "en", "ax"], ["u2"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "C"], ["v"]),
        helper.make_node("Concat", ["u2", "v"], ["y"], axis=1),
    ]
    inits = {"A": _w(6, 6), "B": _w(6, 6), "C": _w(6, 2), "st": _i64(0), "en": _i64(3), "ax": _i64(1)}
    model = make_model(nodes, [("x", (1, 6))], ["y"], inits)
    a = analyze(model)
    na = np.linalg.norm(inits["A"].astype(np.float64), 2)
    assert a.bound_of("h") == pytest.approx(na, rel=1e-9)
    # the composed region after h is B then the Slice: ||B[:, :3]|| times L_h
    nb = np.linalg.norm(inits["B"].astype(np.float64)[:, :3], 2)
    assert a.bound_of("u2") == pytest.approx(nb * na, rel=1e-9)
    # soundness of the whole network: Jacobian norms at random points never exceed the bound
    from tests.helpers.onnx_oracle import runner

    run = runner(model)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal((1, 6)).astype(np.float32)
        jac = np.stack([(run({"x": x + 1e-3 * e[None].astype(np.float32)})[0] - run({"x": x})[0]).ravel() / 1e-3
                        for e in np.eye(6)], axis=1)  # fmt: skip
        assert np.linalg.norm(jac, 2) <= a.bound * (1 + 1e-2)


def test_entry_too_large_is_left_alone(monkeypatch) -> None:
    from lipgraph.passes import linear_maps

    monkeypatch.setattr(linear_maps, "MAX_ENTRY", 4)
    model, shape = matmul_chain()
    assert "LinearMap" not in _ops(model)
    assert analyze(model).bound >= exact_norm(model, shape) * (1 - REL)


def test_certify_tail_reads_the_composed_map() -> None:
    """The pairwise last-layer radii walk through a LinearMap: same rows as the uncomposed head."""
    from lipgraph.tail import find_tail

    model, _ = gemm_slice(keep=4)
    a = analyze(model)
    tails = find_tail(a.graph, a.logits_name, a.tensor_bounds)
    assert tails and tails[-1].matrix.shape == (4, 6)
    from onnx import numpy_helper

    w = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}["W"]
    np.testing.assert_allclose(tails[-1].matrix, w[:4], rtol=1e-12, atol=1e-12)
