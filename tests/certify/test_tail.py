"""The affine tail and the radius formulas, against oracles: ONNX Runtime on basis vectors for the
composed matrix, brute-force formulas for the radii (ties, misclassified, single logit)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze
from lipgraph.certify import certify, compute_radii
from lipgraph.tail import find_tail


def _model(nodes, inits, in_shape, out_shape, opset=17):
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else None), k)
         for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _ort_jacobian(m: onnx.ModelProto, shape: tuple[int, ...]) -> np.ndarray:
    """Oracle: ``logits(e_j) - logits(0)`` for an affine model, run by ONNX Runtime (float32)."""
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    d = int(np.prod(shape))
    basis = np.eye(d, dtype=np.float32).reshape((d, *shape))
    zero = np.zeros((1, *shape), dtype=np.float32)
    out = sess.run(None, {"x": basis})[0].reshape(d, -1)
    b = sess.run(None, {"x": zero})[0].reshape(1, -1)
    return (out - b).T.astype(np.float64)


def _affine_chain(rng):
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),             # (N, 2, 3) -> (N, 6)
        helper.make_node("Gemm", ["r1", "w1", "b1"], ["g1"], transB=1, alpha=0.5),  # (N, 12)
        helper.make_node("Sub", ["c0", "g1"], ["s"]),                 # c - g  (negation)
        helper.make_node("Mul", ["s", "k"], ["mu"]),                  # per-feature scale
        helper.make_node("Reshape", ["mu", "s2"], ["r2"]),            # (N, 4, 3)
        helper.make_node("MatMul", ["r2", "w2t"], ["mm"]),            # (N, 4, 4)
        helper.make_node("Div", ["mm", "dv"], ["dd"]),
        helper.make_node("Flatten", ["dd"], ["logits"], axis=1),      # (N, 16)
    ]
    inits = {
        "s1": np.array([0, -1], dtype=np.int64), "w1": rng.normal(size=(12, 6)), "b1": rng.normal(size=12),
        "c0": rng.normal(size=(1, 12)), "k": rng.uniform(0.5, 2, size=12),
        "s2": np.array([-1, 4, 3], dtype=np.int64), "w2t": rng.normal(size=(3, 4)), "dv": np.array(3.0),
    }
    return nodes, inits


def test_composed_tail_matches_ort_jacobian() -> None:
    rng = np.random.default_rng(0)
    nodes, inits = _affine_chain(rng)
    m = _model(nodes, inits, ["N", 2, 3], ["N", 16])
    a = analyze(m)
    tails = find_tail(a.graph, a.logits_name, a.tensor_bounds)
    assert tails, "an all-affine model is one long tail"
    longest = tails[-1]
    assert longest.h == "x"
    oracle = _ort_jacobian(m, (2, 3))
    np.testing.assert_allclose(longest.matrix, oracle, rtol=1e-4, atol=1e-5)
    for t in range(oracle.shape[0]):
        exact = np.linalg.norm(oracle - oracle[t], axis=1)
        got = longest.pair_norms(t)
        assert np.all(got >= exact * (1 - 1e-5))
        np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-5)
    # an affine classifier's exact L2 radius is min_i (F_t - F_i) / ||a_t - a_i||: pairwise attains it
    x = rng.normal(size=(40, 2, 3)).astype(np.float32)
    cert = certify(m, x, eps=[0.1])
    f = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    f = f.astype(np.float64)
    t = f.argmax(1)
    exact = np.array([min((f[s, t[s]] - f[s, i]) / np.linalg.norm(oracle[t[s]] - oracle[i])
                          for i in range(f.shape[1]) if i != t[s]) for s in range(len(x))])
    assert cert.radius_method == "pairwise"
    assert np.all(cert.radii <= exact * (1 + 1e-5))
    # within the margins' proven float32 error allowance (lipgraph.floaterr: 8 chained affine ops)
    np.testing.assert_allclose(cert.radii, exact, rtol=1e-2)


def test_nonlinear_op_ends_the_tail() -> None:
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h0"], transB=1),
        helper.make_node("Relu", ["h0"], ["h"]),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["logits"], axis=1),
    ]
    inits = {"w1": rng.normal(size=(8, 5)), "b1": rng.normal(size=8), "w2": rng.normal(size=(4, 8)),
             "b2": rng.normal(size=4)}
    m = _model(nodes, inits, ["N", 5], ["N", 4])
    a = analyze(m)
    assert a.logits_name == "g"
    tails = find_tail(a.graph, a.logits_name, a.tensor_bounds)
    assert [c.h for c in tails] == ["h"]
    np.testing.assert_allclose(tails[0].matrix, inits["w2"].astype(np.float32), rtol=0, atol=0)
    # certify through the API: the session outputs the pre-softmax logits
    x = rng.normal(size=(50, 5)).astype(np.float32)
    cert = certify(m, x, eps=[0.0, 0.1])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"x": x})[0]
    np.testing.assert_array_equal(cert.predictions, probs.argmax(1))
    assert cert.radius_method == "pairwise"
    assert cert.certified_accuracy["0.0"] == 1.0  # no labels: predictions certified at radius 0


def test_ties_misclassified_and_single_logit_radii() -> None:
    logits = np.array([[3.0, 3.0, 1.0],    # tie between the label and another class: radius 0
                       [5.0, 1.0, 0.0],    # correct, margin 4
                       [0.0, 2.0, 1.0]])   # label 0 but predicted 1: radius 0
    labels = np.array([0, 0, 0])
    r = compute_radii(logits, labels, lipschitz=2.0)
    assert r.radius[0] == 0 and r.radius[2] == 0
    expect = (4.0 - 1e-5 * 5.0) / (math.sqrt(2) * 2.0)
    assert r.radius[1] <= expect and r.radius[1] == pytest.approx(expect, rel=1e-12)
    assert r.method == "global"
    # single logit: class 1 iff z > 0, radius |z| / L
    z = np.array([[2.0], [-1.0], [0.0]])
    rb = compute_radii(z, np.array([1, 0, 1]), lipschitz=4.0)
    np.testing.assert_array_equal(rb.prediction, [1, 0, 0])
    assert rb.radius[0] == pytest.approx(2.0 * (1 - 1e-5) / 4.0) and rb.radius[0] <= 2.0 * (1 - 1e-5) / 4.0
    assert rb.radius[1] == pytest.approx(1.0 * (1 - 1e-5) / 4.0)
    assert rb.radius[2] == 0


def test_single_logit_sigmoid_model_is_recognised() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(1, 6))
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1),
             helper.make_node("Sigmoid", ["z"], ["logits"])]
    m = _model(nodes, {"w": w, "b": np.array([0.1])}, ["N", 6], ["N", 1])
    x = rng.normal(size=(40, 6)).astype(np.float32)
    z = x.astype(np.float64) @ w.astype(np.float32).astype(np.float64).T + np.float32(0.1)
    cert = certify(m, x, eps=[0.1])
    np.testing.assert_array_equal(cert.predictions, (z[:, 0] > 0).astype(int))
    # the map is affine: the exact radius is |z| / ||w||; certified radii may not exceed it
    exact = np.abs(z[:, 0]) / np.linalg.norm(w.astype(np.float32))
    assert np.all(cert.radii <= exact * (1 + 1e-6))
    np.testing.assert_allclose(cert.radii, exact, rtol=1e-4)
    assert any("Sigmoid" in wmsg for wmsg in cert.warnings)


@pytest.mark.parametrize("block", [1, 4, 5])
def test_basis_blocks_give_the_same_matrix(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The basis goes through the tail in blocks of columns (memory); any block size gives the matrix of one
    block (each column is one basis vector's image), the same rounding count, and ONNX Runtime's Jacobian."""
    import lipgraph.tail as tail_mod

    rng = np.random.default_rng(3)
    nodes, inits = _affine_chain(rng)
    m = _model(nodes, inits, ["N", 2, 3], ["N", 16])
    a = analyze(m)
    whole = find_tail(a.graph, a.logits_name, a.tensor_bounds)[-1]
    monkeypatch.setattr(tail_mod, "BASIS_BLOCK", block)
    blocked = find_tail(a.graph, a.logits_name, a.tensor_bounds)[-1]
    assert blocked.n_ops == whole.n_ops
    np.testing.assert_allclose(blocked.matrix, whole.matrix, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(blocked.abs_matrix, whole.abs_matrix, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(blocked.matrix, _ort_jacobian(m, (2, 3)), rtol=1e-4, atol=1e-5)
