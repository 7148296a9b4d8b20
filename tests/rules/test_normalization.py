"""Oracle tests for normalization rules (SPEC sec. 4 "Normalization", sec. 9).

BatchNormalization: the dense matrix from onnxruntime (float64 model) and the closed-form diagonal.
Layer/Instance/Group normalization: central-difference Jacobians through onnxruntime near constant
inputs, where the vacuous bound max|gamma|/sqrt(eps) is nearly attained.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError

LOW = 1 - 1e-9
DOUBLE = TensorProto.DOUBLE
FLOAT = TensorProto.FLOAT


def _model(op, in_shape, opset, consts, elem=DOUBLE, n_out=1, **attrs):
    dt = np.float64 if elem == DOUBLE else np.float32
    x = helper.make_tensor_value_info("x", elem, list(in_shape))
    y = helper.make_tensor_value_info("y", elem, None)
    inits = [numpy_helper.from_array(np.asarray(v, dtype=dt), name) for name, v in consts]
    outs = ["y"] + [f"s{i}" for i in range(1, n_out)]
    node = helper.make_node(op, ["x"] + [n for n, _ in consts], outs, **attrs)
    g = helper.make_graph([node], "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _f32(a):
    """Values exactly representable in float32, so float32 and float64 models hold the same numbers."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _eps(e):
    return float(np.float32(e))  # attributes are stored as float32 in the model


def _bn_consts(c, rng, spatial_shape=()):
    shape = (c, *spatial_shape)
    gamma = _f32(rng.standard_normal(shape) * 2)
    beta = _f32(rng.standard_normal(shape))
    mean = _f32(rng.standard_normal(shape))
    var = _f32(rng.uniform(0.01, 3.0, shape))
    return [("g", gamma), ("b", beta), ("m", mean), ("v", var)]


@pytest.mark.parametrize("opset,attrs", [(15, {}), (9, {"epsilon": 1e-3}), (7, {"spatial": 1})])
def test_batchnorm_alone_vs_dense_and_diag(opset, attrs):
    rng = np.random.default_rng(opset)
    shape = [1, 4, 3, 3]
    consts = _bn_consts(4, rng)
    m = _model("BatchNormalization", shape, opset, consts, **attrs)
    sess = _session(m)
    n = int(np.prod(shape))
    zero = sess.run(["y"], {"x": np.zeros(shape)})[0].ravel()
    dense = np.array([sess.run(["y"], {"x": e.reshape(shape)})[0].ravel() - zero for e in np.eye(n)]).T
    exact = float(np.linalg.svd(dense, compute_uv=False)[0])
    eps = _eps(attrs.get("epsilon", 1e-5))
    diag = np.abs(consts[0][1]) / np.sqrt(consts[3][1] + eps)
    bound = analyze(m).bound
    assert exact == pytest.approx(diag.max(), rel=1e-12)  # the oracle agrees with the closed form
    assert bound >= exact * LOW
    assert bound <= exact * (1 + 1e-9)


@pytest.mark.parametrize("opset,attrs,spatial_shape", [(7, {"spatial": 0}, (2, 2)), (6, {"is_test": 1}, ())])
def test_batchnorm_closed_form_old_opsets(opset, attrs, spatial_shape):
    """Forms onnxruntime no longer runs (per-element statistics, opset 6): the closed-form diagonal."""
    rng = np.random.default_rng(3)
    shape = [1, 2, 2, 2]
    consts = _bn_consts(2, rng, spatial_shape)
    m = _model("BatchNormalization", shape, opset, consts, elem=FLOAT, **attrs)
    diag = np.abs(consts[0][1]) / np.sqrt(consts[3][1] + _eps(1e-5))
    assert analyze(m).bound >= diag.max() * LOW
    assert analyze(m).bound <= diag.max() * (1 + 1e-9)


@pytest.mark.parametrize("opset,attrs,n_out", [(15, {"training_mode": 1}, 3), (6, {"is_test": 0}, 1), (9, {}, 5)])
def test_batchnorm_training_refused(opset, attrs, n_out):
    rng = np.random.default_rng(0)
    m = _model("BatchNormalization", [1, 3, 2, 2], opset, _bn_consts(3, rng), n_out=n_out, **attrs)
    with pytest.raises(UnsupportedModelError, match="training|statistics"):
        analyze(m)


def _fd_jacobian_norm(sess, x, h=1e-6):
    n = x.size
    cols = []
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        yp = sess.run(["y"], {"x": x + e.reshape(x.shape)})[0].ravel()
        ym = sess.run(["y"], {"x": x - e.reshape(x.shape)})[0].ravel()
        cols.append((yp - ym) / (2 * h))
    return float(np.linalg.svd(np.array(cols).T, compute_uv=False)[0])


def _near_constant(shape, rng, scale=1e-4):
    return 0.7 + scale * rng.standard_normal(shape)


@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_layernorm_vacuous_bound_dominates_jacobian_near_constant_input(eps):
    rng = np.random.default_rng(5)
    d = 8
    gamma = _f32(rng.uniform(0.5, 2.0, d))
    m = _model("LayerNormalization", [1, 3, d], 17, [("g", gamma), ("b", rng.standard_normal(d))],
               axis=-1, epsilon=eps)
    res = analyze(m)
    assert any("vacuous" in w for w in res.warnings)
    sess = _session(m)
    worst = 0.0
    for scale in (1e-4 * math.sqrt(eps), 1e-1, 1.0):
        x = _near_constant((1, 3, d), rng, scale)
        worst = max(worst, _fd_jacobian_norm(sess, x))
    assert res.bound >= worst * (1 - 1e-5)  # central differences: relative error ~h^2 curvature
    # Near a constant input the bound is nearly attained (it is the supremum there).
    assert worst >= 0.5 * res.bound


def test_instancenorm_and_groupnorm_vacuous():
    rng = np.random.default_rng(7)
    shape = (1, 4, 3, 3)
    gamma = _f32(rng.uniform(-2, 2, 4))
    for model in (
        _model("InstanceNormalization", shape, 13, [("g", gamma), ("b", rng.standard_normal(4))], epsilon=1e-3,
               elem=FLOAT),
        _model("GroupNormalization", shape, 21, [("g", gamma), ("b", rng.standard_normal(4))], epsilon=1e-3,
               num_groups=2, elem=FLOAT),
    ):
        res = analyze(model)
        assert any("vacuous" in w for w in res.warnings)
        assert res.bound >= np.abs(gamma).max() / math.sqrt(_eps(1e-3)) * LOW
        sess = _session(model)
        x = _near_constant(shape, rng, 1e-3).astype(np.float32)
        # float32 model: a secant between nearby near-constant inputs is a lower estimate.
        dx = (1e-3 * rng.standard_normal(shape)).astype(np.float32)
        ya, yb = (sess.run(["y"], {"x": v})[0].astype(np.float64) for v in (x, x + dx))
        secant = np.linalg.norm(ya - yb) / np.linalg.norm((x + dx).astype(np.float64) - x)
        assert secant <= res.bound * (1 + 1e-3)


@pytest.mark.parametrize("op,opset,consts,attrs", [
    ("LayerNormalization", 17, [("g", np.ones(4))], {"epsilon": 0.0}),
    ("MeanVarianceNormalization", 13, [], {}),
])
def test_not_lipschitz_normalizations_refused(op, opset, consts, attrs):
    m = _model(op, [1, 2, 4], opset, consts, elem=FLOAT, **attrs)
    with pytest.raises(UnsupportedModelError, match=op):
        analyze(m)
