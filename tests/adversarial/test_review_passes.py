"""Review: near-misses of the pattern passes, each checked against an oracle.

Oracle: every model here is linear or piecewise linear on small shapes, so the exact norm of its dense
Jacobian (ONNX Runtime in float64, ``exact_norm``) or a secant lower estimate (``lower_estimate``) is at
hand. A pass that fuses a near-miss into its family node would give a bound below it. For the power-series
pass the structural precheck (``_may_start``) is also compared with the full match on every near-miss.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lipgraph import analyze
from lipgraph.errors import LipgraphError
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from tests.adversarial.oracle import lower_estimate, sound
from tests.helpers.onnx_oracle import exact_norm, make_model

D = 6


def _skew(n: int, seed: int, scale: float = 0.3) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, n)) * scale
    return (a - a.T).astype(np.float32)


def _ops(model: onnx.ModelProto) -> list[str]:
    g = build_graph(model)
    run_passes(g)
    return [n.op_type for n in g.nodes]


def _bound(model: onnx.ModelProto) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return analyze(model).bound


# ------------------------------------------------------------------------------------ power series


def series(
    terms: int = 4,
    weights: dict[int, np.ndarray] | None = None,
    coefs: dict[int, float] | None = None,
    mutate: Callable[[list[onnx.NodeProto], dict[str, np.ndarray]], None] | None = None,
    base: np.ndarray | None = None,
) -> onnx.ModelProto:
    """``x + sum A^i x / i!`` as MatMul -> Div -> Add; ``weights[i]`` / ``coefs[i]`` override step i."""
    w = _skew(D, 0) if base is None else base
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {}
    z, acc = "x", "x"
    for i in range(1, terms + 1):
        wi = (weights or {}).get(i)
        wname = "w" if wi is None else f"w{i}"
        inits[wname] = w if wi is None else wi.astype(np.float32)
        inits[f"c{i}"] = np.array((coefs or {}).get(i, float(i)), dtype=np.float32)
        nodes += [
            helper.make_node("MatMul", [z, wname], [f"a{i}"], name=f"mm{i}"),
            helper.make_node("Div", [f"a{i}", f"c{i}"], [f"z{i}"], name=f"div{i}"),
            helper.make_node("Add", [acc, f"z{i}"], [f"s{i}"], name=f"add{i}"),
        ]
        z, acc = f"z{i}", f"s{i}"
    nodes.append(helper.make_node("Identity", [acc], ["y"], name="out"))
    if mutate is not None:
        mutate(nodes, inits)
    return make_model(nodes, [("x", [1, D])], ["y"], inits)


def _replace(nodes: list[onnx.NodeProto], name: str, new: list[onnx.NodeProto]) -> None:
    i = next(k for k, n in enumerate(nodes) if n.name == name)
    nodes[i : i + 1] = new


def _ulp_off(w: np.ndarray) -> np.ndarray:
    w = w.copy()
    w[0, 1] = np.nextafter(w[0, 1], np.float32(np.inf))
    return w


W0 = _skew(D, 0)
SERIES_CASES: dict[str, Callable[[], onnx.ModelProto]] = {
    "exact chain": lambda: series(),
    "one weight entry one ulp off": lambda: series(weights={2: _ulp_off(W0)}),
    "second step transposed weight": lambda: series(weights={2: W0.T.copy()}),
    "second step negated weight": lambda: series(weights={3: -W0}),
    "coefficient 1+1e-7": lambda: series(coefs={2: 2 * (1 + 1e-7)}),
    "coefficient negative": lambda: series(coefs={2: -2.0}),
    "coefficient zero (Div by 0)": lambda: series(coefs={2: 0.0}),
    "weight via Identity of the same init": lambda: series(
        mutate=lambda n, i: _replace(
            n,
            "mm2",
            [
                helper.make_node("Identity", ["w"], ["w_id"], name="wid"),
                helper.make_node("MatMul", ["z1", "w_id"], ["a2"], name="mm2"),
            ],
        )
    ),
    "weight scaled 1+1e-7 through a Mul path": lambda: series(
        mutate=lambda n, i: (
            i.__setitem__("s", np.array(1 + 1e-7, np.float32)),
            _replace(
                n,
                "mm2",
                [
                    helper.make_node("Mul", ["w", "s"], ["w_s"], name="ws"),
                    helper.make_node("MatMul", ["z1", "w_s"], ["a2"], name="mm2"),
                ],
            ),
        )
    ),
    "extra Add of x into a term": lambda: series(
        mutate=lambda n, i: _replace(
            n,
            "add2",
            [
                helper.make_node("Add", ["z2", "x"], ["z2x"], name="extra"),
                helper.make_node("Add", ["s1", "z2x"], ["s2"], name="add2"),
            ],
        )
    ),
    "first Add adds Identity(x)": lambda: series(
        mutate=lambda n, i: _replace(
            n,
            "add1",
            [
                helper.make_node("Identity", ["x"], ["xi"], name="xid"),
                helper.make_node("Add", ["xi", "z1"], ["s1"], name="add1"),
            ],
        )
    ),
    "two identical readers of x": lambda: series(
        mutate=lambda n, i: _replace(
            n,
            "out",
            [
                helper.make_node("MatMul", ["x", "w"], ["dup"], name="dup"),
                helper.make_node("Add", ["s4", "dup"], ["y"], name="out"),
            ],
        )
    ),
    "broadcasting bias in a step": lambda: series(
        mutate=lambda n, i: (
            i.__setitem__("b", np.zeros((3, 1, D), np.float32)),
            _replace(
                n,
                "div2",
                [
                    helper.make_node("Div", ["a2", "c2"], ["z2pre"], name="div2"),
                    helper.make_node("Add", ["z2pre", "b"], ["z2"], name="bias2"),
                ],
            ),
        )
    ),
    "broadcasting scalar of rank 3": lambda: series(
        mutate=lambda n, i: i.__setitem__("c2", np.full((3, 1, 1), 2.0, np.float32))
    ),
    "Sub instead of Add for the running sum": lambda: series(
        mutate=lambda n, i: _replace(n, "add2", [helper.make_node("Sub", ["s1", "z2"], ["s2"], name="add2")])
    ),
}


def _with_graph_input(model: onnx.ModelProto, init: str) -> onnx.ModelProto:
    """The initializer ``init`` also listed as a graph input: ONNX Runtime lets a caller override it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    t = next(t for t in m.graph.initializer if t.name == init)
    m.graph.input.append(helper.make_tensor_value_info(init, t.data_type, list(t.dims)))
    return m


@pytest.mark.parametrize("case", list(SERIES_CASES))
def test_power_series_near_miss_sound(case: str) -> None:
    model = SERIES_CASES[case]()
    try:
        bound = _bound(model)
    except LipgraphError:
        return  # refused: sound
    exact = exact_norm(model, [1, D])
    assert bound >= exact * (1 - 1e-7) - 1e-12, (case, bound, exact)
    if case == "exact chain":
        assert _ops(model)[0] == "PowerSeries" and bound <= 1.01 * exact


def test_power_series_weight_listed_as_graph_input_uses_its_default() -> None:
    # Old exporters list every initializer among the inputs; lipgraph (by design, tests/test_loader.py) reads
    # it as its initializer value, which is what certify feeds ONNX Runtime (only the certified input is fed).
    plain, listed = series(), _with_graph_input(series(), "w")
    assert _bound(listed) == _bound(plain) >= exact_norm(plain, [1, D]) * (1 - 1e-7)


@pytest.mark.parametrize("case", list(SERIES_CASES))
def test_power_series_precheck_agrees_with_full_match(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipgraph.passes import power_series as ps

    g = build_graph(SERIES_CASES[case]())
    starts = [n for n in g.nodes if n.op_type in ("Conv", "MatMul", "Gemm")]
    with_filter = [ps._match(g, n) is not None for n in starts]
    monkeypatch.setattr(ps, "_may_start", lambda graph, start, x: True)
    assert with_filter == [ps._match(g, n) is not None for n in starts]


# ------------------------------------------------------------------------------------ LMT screen


@pytest.mark.parametrize(
    "kind", ["random", "rank1", "zero", "subnormal", "huge", "one_hot", "stride2", "grouped", "dilated"]
)
@pytest.mark.parametrize("size", [6, 40])  # dense SVD vs LMT; circulant vs LMT (rank1 at 40: LMT wins)
def test_lmt_screen_never_changes_the_choice(kind: str, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """conv_bound with the early-stopping screen returns the same value as with the screen always saying
    "compute LMT" (the min of the two sound bounds), on kernels chosen to sit at the screen's edges."""
    from lipgraph.norms import conv

    rng = np.random.default_rng(3)
    groups, strides, dil = 1, (1, 1), (1, 1)
    w = rng.standard_normal((4, 4, 3, 3))
    if kind == "rank1":  # LMT's sqrt(overlap) ||W_mat|| close to the exact norm: the screen decides on a tie
        w = np.einsum("o,i,h,v->oihv", rng.standard_normal(4), rng.standard_normal(4), [1, 1, 1], [1, 1, 1])
    elif kind == "zero":
        w = np.zeros_like(w)
    elif kind == "subnormal":
        w = w * 1e-310
    elif kind == "huge":
        w = w * 1e150
    elif kind == "one_hot":  # a single tap: LMT overlap 1, LMT == exact
        w = np.zeros_like(w)
        w[:, :, 1, 1] = rng.standard_normal((4, 4))
    elif kind == "stride2":
        strides = (2, 2)
    elif kind == "grouped":
        groups, w = 2, rng.standard_normal((4, 2, 3, 3))
    elif kind == "dilated":
        dil = (2, 2)
    args = (w, groups, strides, dil, (1, 1), (1, 1), (size, size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        screened = conv.conv_bound(*args)
        monkeypatch.setattr(conv, "_lmt_may_beat", lambda *a: True)
        full = conv.conv_bound(*args)
    assert screened.value == full.value or (math.isnan(screened.value) and math.isnan(full.value)), kind
    if kind == "rank1" and size == 40:
        assert screened.method.startswith("LMT")  # the LMT branch is exercised, not only skipped


# ------------------------------------------------------------------------------------ other passes


def _mlp_sandwich_like(mutate: str) -> tuple[onnx.ModelProto, list[int]]:
    """W^T relu(W x) style sandwiches and Gemm pairs: the shape several passes look for."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((D, D)).astype(np.float32)
    wt = w.T.copy()
    inits = {"w": w, "wt": wt}
    if mutate == "transposed weight off by one ulp":
        inits["wt"] = _ulp_off(wt)
    elif mutate == "scale 1+1e-7":
        inits["wt"] = (wt * np.float32(1 + 1e-7)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "wt"], ["g"]),
        helper.make_node("Sub", ["x", "g"], ["y"]),
    ]
    return make_model(nodes, [("x", [1, D])], ["y"], inits), [1, D]


@pytest.mark.parametrize("mutate", ["none", "transposed weight off by one ulp", "scale 1+1e-7"])
def test_sandwich_like_near_miss_sound(mutate: str) -> None:
    model, shape = _mlp_sandwich_like(mutate)
    try:
        bound = _bound(model)
    except LipgraphError:
        return
    low, f64 = lower_estimate(model, shape, n_points=4)
    assert sound(bound, low, f64), (mutate, bound, low)


def _lppool_like(p: int, axis_keepdims: int) -> onnx.ModelProto:
    nodes = [helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[1, 1], p=p)]
    return make_model(nodes, [("x", [1, 2, 4, 4])], ["y"], {})


@pytest.mark.parametrize("p", [1, 2, 3])
def test_lppool_sound(p: int) -> None:
    model = _lppool_like(p, 1)
    try:
        bound = _bound(model)
    except LipgraphError:
        return
    low, f64 = lower_estimate(model, [1, 2, 4, 4], n_points=3)
    assert sound(bound, low, f64), (p, bound, low)


def _groupsort_like(perm_off: bool, axis: int) -> onnx.ModelProto:
    """MaxMin written with Reshape/Max/Min/Concat, the way exporters do; a wrong axis must not be trusted."""
    shape = numpy_helper.from_array(np.array([1, D // 2, 2], np.int64), "shp")
    back = numpy_helper.from_array(np.array([1, D], np.int64), "back")
    split = numpy_helper.from_array(np.array([1, 1], np.int64), "split")
    nodes = [
        helper.make_node("Reshape", ["x", "shp"], ["r"]),
        helper.make_node("Split", ["r", "split"], ["a", "b"], axis=2),
        helper.make_node("Max", ["a", "b"], ["mx"]),
        helper.make_node("Min", ["a", "b"] if not perm_off else ["a", "a"], ["mn"]),
        helper.make_node("Concat", ["mx", "mn"], ["c"], axis=axis),
        helper.make_node("Reshape", ["c", "back"], ["y"]),
    ]
    m = make_model(nodes, [("x", [1, D])], ["y"], {})
    m.graph.initializer.extend([shape, back, split])
    return m


@pytest.mark.parametrize("perm_off,axis", [(False, 2), (False, 1), (True, 2)])
def test_groupsort_like_near_miss_sound(perm_off: bool, axis: int) -> None:
    model = _groupsort_like(perm_off, axis)
    try:
        onnx.checker.check_model(model)
        bound = _bound(model)
    except (LipgraphError, onnx.checker.ValidationError):
        return
    low, f64 = lower_estimate(model, [1, D], n_points=4)
    assert sound(bound, low, f64), (perm_off, axis, bound, low)


# ------------------------------------------------------------------------------------ fold_scale


def _fold_case(case: str) -> onnx.ModelProto:
    """Conv / affine / activation chains near the fold_scale pass's patterns (4 channels, 5x5)."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    s = rng.uniform(0.2, 3.0, 4).astype(np.float32)
    inits: dict[str, np.ndarray] = {"w": w, "w2": w.copy()}
    conv = dict(pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    if case == "scale on the spatial axis before conv":
        inits["s"] = rng.uniform(0.2, 3.0, (1, 1, 5, 1)).astype(np.float32)
        nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"], **conv)]
    elif case == "negative scale across Tanh":
        inits["s"] = (s * np.array([1, -1, 1, -1], np.float32)).reshape(1, 4, 1, 1)
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["m"]),
            helper.make_node("Tanh", ["m"], ["t"]),
            helper.make_node("Conv", ["t", "w"], ["y"], **conv),
        ]
    elif case == "negative scale across LeakyRelu(-0.5)":
        inits["s"] = (-s).reshape(1, 4, 1, 1)
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["m"]),
            helper.make_node("LeakyRelu", ["m"], ["t"], alpha=-0.5),
            helper.make_node("Conv", ["t", "w"], ["y"], **conv),
        ]
    elif case == "scale shared by two convs, one also read raw":
        inits["s"] = s.reshape(1, 4, 1, 1)
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["m"]),
            helper.make_node("Conv", ["m", "w"], ["a"], **conv),
            helper.make_node("Conv", ["x", "w"], ["b"], **conv),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ]
    elif case == "grouped conv after per-channel scale":
        inits["wg"] = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
        inits["s"] = s.reshape(1, 4, 1, 1)
        nodes = [
            helper.make_node("Mul", ["x", "s"], ["m"]),
            helper.make_node("Conv", ["m", "wg"], ["y"], group=2, **conv),
        ]
    elif case == "BatchNorm with a zero variance and tiny eps":
        inits.update(g=s, b=np.zeros(4, np.float32), mu=np.zeros(4, np.float32), var=np.array([0, 1, 1, 1], np.float32))
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["c"], **conv),
            helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["y"], epsilon=1e-12),
        ]
    elif case == "Div by a per-channel constant before conv":
        inits["s"] = s.reshape(1, 4, 1, 1)
        nodes = [helper.make_node("Div", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"], **conv)]
    elif case == "Sub with the input second":
        inits["s"] = s.reshape(1, 4, 1, 1)
        nodes = [helper.make_node("Sub", ["s", "x"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"], **conv)]
    else:
        raise AssertionError(case)
    for k in list(inits):
        if not any(k in n.input for n in nodes):
            del inits[k]
    return make_model(nodes, [("x", [1, 4, 5, 5])], ["y"], inits)


FOLD_CASES = [
    "scale on the spatial axis before conv",
    "negative scale across Tanh",
    "negative scale across LeakyRelu(-0.5)",
    "scale shared by two convs, one also read raw",
    "grouped conv after per-channel scale",
    "BatchNorm with a zero variance and tiny eps",
    "Div by a per-channel constant before conv",
    "Sub with the input second",
]


@pytest.mark.parametrize("case", FOLD_CASES)
def test_fold_scale_near_miss_sound(case: str) -> None:
    model = _fold_case(case)
    try:
        bound = _bound(model)
    except LipgraphError:
        return
    low, f64 = lower_estimate(model, [1, 4, 5, 5], n_points=2)
    assert sound(bound, low, f64), (case, bound, low)
