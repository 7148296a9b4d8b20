"""Oracle tests for pooling and reductions (SPEC sec. 4 "Pooling", sec. 9).

Linear ops (AveragePool, GlobalAveragePool, ReduceMean/Sum): the exact norm of the dense matrix built
by feeding basis vectors through onnxruntime. onnxruntime pools in float32 only, so each entry (always
``1/m`` for an integer divisor m that onnxruntime chose) is snapped to ``1/round(1/entry)`` in float64:
the oracle keeps onnxruntime's divisors but not its float32 rounding (checked to move entries < 1e-6).
Nonlinear ops (MaxPool, LpPool): a spike probe through onnxruntime counts how many outputs one input
element really drives (a lower bound sqrt(m) attained by a Jacobian), plus random-point Jacobians.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.norms.pooling import (
    AxisPool,
    avg_schur_any_size,
    axis_avg_matrix,
    axis_avg_schur,
    axis_overlap,
    overlap_any_size,
)

LOW = 1 - 1e-9
FLOAT = TensorProto.FLOAT


def _model(op, in_shape, opset, inputs=(), outputs=("y",), elem=FLOAT, **attrs):
    x = helper.make_tensor_value_info("x", elem, list(in_shape))
    outs = [helper.make_tensor_value_info(o, elem if o == "y" else TensorProto.INT64, None) for o in outputs]
    inits = [helper.make_tensor(name, TensorProto.INT64, [len(v)], list(v)) for name, v in inputs]
    node = helper.make_node(op, ["x"] + [n for n, _ in inputs], list(outputs), **attrs)
    g = helper.make_graph([node], "g", [x], outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _dense(model, in_shape):
    """Dense matrix of a linear (or affine) one-node model: columns f(e_i) - f(0)."""
    sess = _session(model)
    n = int(np.prod(in_shape))
    zero = sess.run(["y"], {"x": np.zeros(in_shape, np.float32)})[0].ravel()
    eye = np.eye(n, dtype=np.float32)
    cols = [sess.run(["y"], {"x": eye[i].reshape(in_shape)})[0].ravel() - zero for i in range(n)]
    a = np.array(cols, dtype=np.float64).T
    nz = a != 0
    snapped = np.zeros_like(a)
    snapped[nz] = 1.0 / np.rint(1.0 / a[nz])
    assert np.all(np.abs(snapped - a) <= 1e-6 * np.abs(a)), "an entry is not 1/integer"
    return snapped


def _exact(model, in_shape) -> float:
    return float(np.linalg.svd(_dense(model, in_shape), compute_uv=False)[0])


def _spike_count(model, in_shape) -> int:
    """Largest number of outputs equal to a spike placed at one input element (others -1)."""
    sess = _session(model)
    n = int(np.prod(in_shape))
    best = 0
    for i in range(n):
        x = -np.ones(n, dtype=np.float32)
        x[i] = 10.0
        y = sess.run(["y"], {"x": x.reshape(in_shape)})[0]
        best = max(best, int(np.count_nonzero(np.isclose(y, 10.0))))
    return best


# ------------------------------------------------------------------------------------- AveragePool

AVG_CASES = [
    # kernel, strides, pads, count_include_pad, ceil_mode, H, W, extra attrs, opset
    ([2, 2], [2, 2], [0, 0, 0, 0], 0, 0, 6, 6, {}, 13),
    ([3, 3], [1, 1], [1, 1, 1, 1], 0, 0, 5, 6, {}, 13),
    ([3, 3], [1, 1], [1, 1, 1, 1], 1, 0, 5, 6, {}, 13),
    ([3, 2], [2, 1], [1, 0, 1, 1], 0, 0, 7, 5, {}, 13),
    ([3, 2], [2, 1], [1, 0, 1, 1], 1, 0, 7, 5, {}, 13),
    ([3, 3], [2, 2], [0, 0, 0, 0], 0, 1, 8, 6, {}, 13),
    ([3, 3], [2, 2], [1, 0, 2, 1], 1, 1, 9, 6, {}, 13),
    ([3, 3], [2, 2], [0, 0, 0, 0], 1, 1, 6, 6, {}, 13),  # last ceil window leaves the padded range
    ([2, 3], [3, 2], [1, 1, 1, 1], 1, 1, 7, 7, {}, 13),
    ([2, 3], [3, 2], [1, 1, 1, 1], 0, 1, 7, 7, {}, 13),
    ([3, 3], [2, 2], [0, 0, 0, 0], 0, 0, 7, 7, {"auto_pad": "SAME_UPPER"}, 13),
    ([2, 2], [1, 1], [0, 0, 0, 0], 0, 0, 5, 4, {"auto_pad": "SAME_LOWER"}, 13),
    ([2, 2], [1, 1], [0, 0, 0, 0], 1, 0, 5, 4, {"auto_pad": "SAME_UPPER"}, 13),
    ([3, 2], [2, 2], [0, 0, 0, 0], 0, 0, 6, 5, {"auto_pad": "VALID"}, 13),
    ([2, 2], [1, 2], [1, 1, 1, 1], 0, 0, 6, 6, {"dilations": [2, 1]}, 19),
    ([2, 2], [2, 1], [1, 0, 0, 1], 1, 1, 7, 5, {"dilations": [2, 2]}, 19),
]


@pytest.mark.parametrize("case", AVG_CASES, ids=[str(i) for i in range(len(AVG_CASES))])
def test_average_pool_vs_dense(case):
    k, s, pads, cip, ceil, h, w, extra, opset = case
    shape = [1, 2, h, w]
    attrs = dict(kernel_shape=k, strides=s, count_include_pad=cip, **extra)
    if "auto_pad" not in extra:
        attrs.update(pads=pads, ceil_mode=ceil)
    m = _model("AveragePool", shape, opset, **attrs)
    exact = _exact(m, shape)
    bound = analyze(m).bound
    assert bound >= exact * LOW
    # Known sizes: the per-axis SVD is exact up to the rounding allowance.
    assert bound <= exact * (1 + 1e-9)


def test_average_pool_non_overlapping_is_one_over_sqrt_k():
    m = _model("AveragePool", [1, 1, 6, 9], 13, kernel_shape=[2, 3], strides=[2, 3])
    assert analyze(m).bound == pytest.approx(1 / math.sqrt(6), rel=1e-12)
    assert analyze(m).bound >= _exact(m, [1, 1, 6, 9]) * LOW


def _schur_2d(k, s, pads, cip, ceil, h, w, auto_pad="NOTSET", dil=(1, 1)):
    nd = 2
    axes = [AxisPool(k[d], s[d], dil[d], pads[d], pads[nd + d], auto_pad, bool(ceil)) for d in range(nd)]
    return math.prod(axis_avg_schur(ax, n, bool(cip)) for ax, n in zip(axes, (h, w), strict=True))


SCHUR_SLACK = 1.45  # measured max Schur/exact over AVG_CASES (see test below)


def test_average_pool_schur_is_sound_and_tight():
    """The Schur test (used for unknown sizes) against the dense oracle: >= exact, <= SCHUR_SLACK x."""
    ratios = []
    for k, s, pads, cip, ceil, h, w, extra, opset in AVG_CASES:
        shape = [1, 1, h, w]
        attrs = dict(kernel_shape=k, strides=s, count_include_pad=cip, **extra)
        if "auto_pad" not in extra:
            attrs.update(pads=pads, ceil_mode=ceil)
        exact = _exact(_model("AveragePool", shape, opset, **attrs), shape)
        schur = _schur_2d(k, s, pads, cip, ceil, h, w, extra.get("auto_pad", "NOTSET"),
                          tuple(extra.get("dilations", (1, 1))))
        assert schur >= exact * LOW
        ratios.append(schur / exact)
    print("schur/exact", [round(r, 3) for r in ratios])
    assert max(ratios) <= SCHUR_SLACK, ratios


@pytest.mark.parametrize("cip", [0, 1])
def test_average_pool_unknown_size_covers_every_size(cip):
    k, s, pads = [3, 2], [2, 1], [1, 0, 1, 1]
    sym = _model("AveragePool", [1, 1, "H", "W"], 13, kernel_shape=k, strides=s, pads=pads,
                 count_include_pad=cip, ceil_mode=1)
    bound = analyze(sym).bound
    for h, w in [(1, 2), (2, 3), (3, 3), (4, 5), (5, 4), (8, 3), (9, 6)]:
        m = _model("AveragePool", [1, 1, h, w], 13, kernel_shape=k, strides=s, pads=pads,
                   count_include_pad=cip, ceil_mode=1)
        assert bound >= _exact(m, [1, 1, h, w]) * LOW


@pytest.mark.parametrize("ax", [AxisPool(3, 2, 1, 1, 1), AxisPool(3, 2, 1, 0, 2, ceil_mode=True),
                                AxisPool(2, 3, 1, 1, 1, ceil_mode=True), AxisPool(4, 1, 1, 3, 0),
                                AxisPool(3, 2, 1, auto_pad="SAME_LOWER"), AxisPool(2, 2, 3, 1, 1)])
@pytest.mark.parametrize("cip", [False, True])
def test_schur_sup_over_sizes_dominates_each_size(ax, cip):
    """The periodicity argument of avg_schur_any_size, checked far beyond its scan range."""
    sup = avg_schur_any_size(ax, cip)
    for n in range(1, 120):
        assert sup >= axis_avg_schur(ax, n, cip) * LOW
        a = axis_avg_matrix(ax, n, cip)
        if a.size:
            assert sup >= np.linalg.svd(a, compute_uv=False)[0] * LOW


@pytest.mark.parametrize("k,s,d", [(3, 2, 1), (2, 1, 1), (3, 1, 2), (2, 2, 3), (4, 2, 2), (5, 3, 1), (3, 3, 1)])
def test_overlap_any_size_dominates(k, s, d):
    bound = overlap_any_size(AxisPool(k, s, d))
    for pb in range(3):
        for pe in range(3):
            for ceil in (False, True):
                for n in range(1, 40):
                    assert axis_overlap(AxisPool(k, s, d, pb, pe, ceil_mode=ceil), n) <= bound
    # and it is attained on a long axis
    assert axis_overlap(AxisPool(k, s, d), 60) == bound


# ----------------------------------------------------------------------------------------- MaxPool


def test_overlapping_maxpool_is_not_one_lipschitz():
    """SPEC sec. 4 counterexample: [1,2,1,2,1], k = 2, s = 1 -> [2,2,2,2]."""
    m = _model("MaxPool", [1, 1, 5], 13, kernel_shape=[2], strides=[1])
    x = np.array([1, 2, 1, 2, 1], dtype=np.float32).reshape(1, 1, 5)
    y = _session(m).run(["y"], {"x": x})[0].astype(np.float64)
    np.testing.assert_array_equal(y.ravel(), [2, 2, 2, 2])
    ratio = np.linalg.norm(y) / np.linalg.norm(x)  # f(0) = 0
    assert ratio > 1.0
    bound = analyze(m).bound
    assert bound >= ratio
    assert bound == pytest.approx(math.sqrt(2))


MAX_CASES = [
    # kernel, strides, pads, ceil, H, W, extra, opset
    ([3, 3], [2, 2], [1, 1, 1, 1], 0, 7, 7, {}, 13),
    ([3, 3], [1, 1], [1, 1, 1, 1], 0, 5, 5, {}, 13),
    ([2, 2], [2, 2], [0, 0, 0, 0], 0, 6, 6, {}, 13),
    ([3, 2], [2, 1], [0, 1, 1, 0], 1, 8, 5, {}, 13),
    ([2, 2], [1, 1], [0, 0, 0, 0], 0, 6, 6, {"dilations": [2, 2]}, 13),
    ([3, 3], [2, 1], [2, 1, 2, 1], 1, 8, 6, {"dilations": [2, 1]}, 13),
    ([3, 3], [2, 2], [0, 0, 0, 0], 0, 7, 6, {"auto_pad": "SAME_UPPER"}, 13),
    ([2, 2], [3, 3], [0, 0, 0, 0], 0, 7, 5, {"auto_pad": "SAME_LOWER"}, 13),
    ([3, 3], [2, 2], [1, 1, 1, 1], 1, 7, 7, {}, 8),
]


@pytest.mark.parametrize("case", MAX_CASES, ids=[str(i) for i in range(len(MAX_CASES))])
def test_maxpool_window_count_matches_onnxruntime(case):
    k, s, pads, ceil, h, w, extra, opset = case
    shape = [1, 1, h, w]
    attrs = dict(kernel_shape=k, strides=s, **extra)
    if "auto_pad" not in extra:
        attrs["pads"] = pads
        if opset >= 10:
            attrs["ceil_mode"] = ceil
    if opset < 10:
        attrs.pop("dilations", None)
    m = _model("MaxPool", shape, opset, **attrs)
    m_true = _spike_count(m, shape)
    bound = analyze(m).bound
    # The spike's Jacobian has a column with m_true ones: its norm sqrt(m_true) is a true lower bound.
    assert bound >= math.sqrt(m_true) * LOW
    assert bound <= math.sqrt(m_true) * (1 + 1e-9)  # the exact count is tight


def test_maxpool_random_jacobians_below_bound():
    shape = [1, 2, 7, 7]
    m = _model("MaxPool", shape, 13, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    mi = _model("MaxPool", shape, 13, outputs=("y", "idx"), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    sess = _session(mi)
    rng = np.random.default_rng(0)
    bound = analyze(m).bound
    n = int(np.prod(shape))
    worst = 0.0
    for _ in range(20):
        x = (rng.standard_normal(shape) * rng.uniform(0.1, 3)).astype(np.float32)
        _, idx = sess.run(["y", "idx"], {"x": x})
        jac = np.zeros((idx.size, n))
        jac[np.arange(idx.size), idx.ravel()] = 1.0  # ORT's flat indices (batch 1)
        worst = max(worst, float(np.linalg.svd(jac, compute_uv=False)[0]))
    assert worst <= bound * (1 + 1e-12)


def test_maxpool_used_indices_refused():
    x = helper.make_tensor_value_info("x", FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("z", FLOAT, None)
    nodes = [
        helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Cast", ["idx"], ["fi"], to=FLOAT),
        helper.make_node("Add", ["y", "fi"], ["z"]),
    ]
    g = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(UnsupportedModelError, match="Indices output of MaxPool is used"):
        analyze(model)


def test_maxpool_unknown_size_uses_any_size_count():
    m = _model("MaxPool", [1, 1, "H", "W"], 13, kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
    bound = analyze(m).bound
    for h, w in [(5, 4), (7, 7), (6, 3)]:
        mm = _model("MaxPool", [1, 1, h, w], 13, kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1])
        assert bound >= math.sqrt(_spike_count(mm, [1, 1, h, w])) * LOW


# ------------------------------------------------------------------------------------------ LpPool


@pytest.mark.parametrize("k,s,pads", [([3, 3], [2, 2], [1, 1, 1, 1]), ([2, 2], [2, 2], [0, 0, 0, 0])])
def test_lppool_p2_spike_and_random(k, s, pads):
    shape = [1, 1, 6, 6]
    m = _model("LpPool", shape, 11, kernel_shape=k, strides=s, pads=pads, p=2)
    bound = analyze(m).bound
    sess = _session(m)
    # Spike: each window containing it outputs its norm ~10, so a Jacobian column has m entries ~1.
    n = int(np.prod(shape))
    best = 0.0
    for i in range(n):
        x = np.zeros(n, dtype=np.float32)
        x[i] = 1.0
        y = sess.run(["y"], {"x": x.reshape(shape)})[0]
        best = max(best, float(np.linalg.norm(y)))  # f(0) = 0: a secant lower bound
    assert bound >= best * (1 - 1e-6)
    assert bound <= best * (1 + 1e-6)
    # Random secants never exceed the bound.
    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.standard_normal((2, *shape)).astype(np.float32)
        b = a + 1e-2 * b
        ya, yb = (sess.run(["y"], {"x": v})[0].astype(np.float64) for v in (a, b))
        assert np.linalg.norm(ya - yb) <= bound * np.linalg.norm((a - b).astype(np.float64)) * (1 + 1e-4)


def test_lppool_p1_uses_holder_factor():
    shape = [1, 1, 4, 4]
    m = _model("LpPool", shape, 11, kernel_shape=[2, 2], strides=[2, 2], p=1)
    bound = analyze(m).bound
    # All-ones window: sum of |x| moves by sqrt(4) ||dx|| along dx = ones: the Hoelder factor is attained.
    x = np.ones(shape, dtype=np.float32)
    y = _session(m).run(["y"], {"x": x})[0]
    assert np.linalg.norm(y) / np.linalg.norm(x) == pytest.approx(2.0)
    assert bound >= 2.0 * LOW


# -------------------------------------------------------------------------------- global, reductions


def test_global_average_and_max_pool():
    shape = [1, 3, 4, 5]
    m = _model("GlobalAveragePool", shape, 13)
    exact = _exact(m, shape)
    assert analyze(m).bound >= exact * LOW
    assert analyze(m).bound == pytest.approx(exact, rel=1e-9)
    g = _model("GlobalMaxPool", shape, 13)
    assert analyze(g).bound >= math.sqrt(_spike_count(g, shape)) * LOW
    assert analyze(g).bound == pytest.approx(1.0)


@pytest.mark.parametrize("p", [2, 1])
def test_global_lp_pool(p):
    shape = [1, 2, 3, 3]
    m = _model("GlobalLpPool", shape, 13, p=p)
    bound = analyze(m).bound
    sess = _session(m)
    # p = 2: a basis vector gives |y| = |x| (ratio 1); p = 1: the all-ones direction gives sqrt(9) per channel.
    x = np.zeros(shape, np.float32)
    x[0, 0, 1, 1] = 1.0
    if p == 1:
        x[:] = 1.0
    y = sess.run(["y"], {"x": x})[0].astype(np.float64)
    ratio = np.linalg.norm(y) / np.linalg.norm(x.astype(np.float64))
    assert ratio == pytest.approx(1.0 if p == 2 else 3.0, rel=1e-6)
    assert bound >= ratio * (1 - 1e-6)
    assert bound <= ratio * (1 + 1e-6)


REDUCE_CASES = [
    # op, opset, axes (attr or input), keepdims, noop
    ("ReduceMean", 13, [2, 3], 1, None),
    ("ReduceMean", 18, [1], 0, None),
    ("ReduceMean", 18, [], 1, None),
    ("ReduceMean", 18, [], 1, 1),
    ("ReduceSum", 11, [-1], 1, None),
    ("ReduceSum", 13, [1, 2], 0, None),
    ("ReduceSum", 13, [], 1, 1),
]


@pytest.mark.parametrize("op,opset,axes,keepdims,noop", REDUCE_CASES)
def test_linear_reductions_vs_dense(op, opset, axes, keepdims, noop):
    shape = [1, 3, 2, 4]
    attrs = {"keepdims": keepdims}
    inputs: tuple = ()
    axes_as_input = opset >= (13 if op == "ReduceSum" else 18)
    if axes_as_input:
        if axes:
            inputs = (("axes", axes),)
        if noop is not None:
            attrs["noop_with_empty_axes"] = noop
    elif axes:
        attrs["axes"] = axes
    m = _model(op, shape, opset, inputs=inputs, **attrs)
    exact = _exact(m, shape)
    bound = analyze(m).bound
    assert bound >= exact * LOW
    assert bound <= exact * (1 + 1e-9)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceLogSumExp"])
def test_nonlinear_reductions_secants(op):
    shape = [1, 3, 4]
    m = _model(op, shape, 13, axes=[2], keepdims=0)
    bound = analyze(m).bound
    sess = _session(m)
    rng = np.random.default_rng(2)
    worst = 0.0
    for _ in range(200):
        a = rng.standard_normal(shape).astype(np.float32)
        b = (a + rng.standard_normal(shape) * rng.choice([1e-2, 1.0])).astype(np.float32)
        ya, yb = (sess.run(["y"], {"x": v})[0].astype(np.float64) for v in (a, b))
        worst = max(worst, np.linalg.norm(ya - yb) / np.linalg.norm((a - b).astype(np.float64)))
    assert worst <= bound * (1 + 1e-4)  # float32 evaluation noise on secants
    if op == "ReduceL1":  # sqrt(4) is attained by a same-sign direction
        a = np.ones(shape, np.float32)
        ya, yb = (sess.run(["y"], {"x": v})[0] for v in (a, 2 * a))
        assert np.linalg.norm(ya - yb) / np.linalg.norm(a) == pytest.approx(2.0)
        assert bound >= 2.0 * LOW


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceProd", "ReduceLogSum"])
def test_non_lipschitz_reductions_refused(op):
    with pytest.raises(UnsupportedModelError, match=op):
        analyze(_model(op, [1, 3, 4], 13, axes=[2]))
