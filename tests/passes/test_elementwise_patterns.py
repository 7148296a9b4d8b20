"""Softsign, LogSigmoid, Softshrink and tanh-form GELU spelled out in primitive ops (torch 2.13's two
exporters write these forms, see tests/e2e/test_exported_patterns.py): recognised, bounded by
``sup |f'|``; near misses (another constant, another tensor, an extra reader) are not fused.

Oracles: the derivative on a dense grid (analytic, float64) for the constants; the slope of the
model itself, sampled densely through onnxruntime, for each bound; the rewritten graph run by
onnxruntime gives the original outputs (the standard-op rewrites keep the function).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from lipgraph.rules.groupsort import GELU_SUP as GELU_TANH_SUP
from tests.helpers.onnx_oracle import make_model, runner, to_float64
from tests.passes.graphio import graph_to_model

N = 20_001  # grid points in one sample: the dense slope oracle
GRID = np.linspace(-8.0, 8.0, N)
F32_C, F32_K = float(np.float32(0.044715)), float(np.float32(math.sqrt(2 / math.pi)))


def _c(v: float) -> np.ndarray:
    return np.array(v, np.float32)


def softsign(one: float = 1.0, numer: str = "x", extra_reader: bool = False):
    nodes = [
        helper.make_node("Neg", ["x"], ["nx"]),
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["d"]),
        helper.make_node("Div", [numer, "d"], ["y"]),
    ]
    outs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["y", "a"], ["y2"]))
        outs = ["y2"]
    return make_model(nodes, [("x", (1, N))], outs, {"one": _c(one)})


def log_sigmoid(extra_reader: bool = False):
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Log", ["s"], ["y"])]
    outs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["y", "s"], ["y2"]))
        outs = ["y2"]
    return make_model(nodes, [("x", (1, N))], outs)


def softshrink_legacy(lam: float = 0.5, sub: float | None = None, lo: float | None = None):
    inits = {
        "t": _c(lam),
        "c": _c(lam if sub is None else sub),
        "mt": _c(-lam if lo is None else lo),
        "ca": _c(lam),
        "z": _c(0.0),
    }
    nodes = [
        helper.make_node("Greater", ["x", "t"], ["g"]),
        helper.make_node("Sub", ["x", "c"], ["s"]),
        helper.make_node("Where", ["g", "s", "z"], ["w1"]),
        helper.make_node("Less", ["x", "mt"], ["l"]),
        helper.make_node("Add", ["x", "ca"], ["a"]),
        helper.make_node("Where", ["l", "a", "z"], ["w2"]),
        helper.make_node("Add", ["w1", "w2"], ["y"]),
    ]
    return make_model(nodes, [("x", (1, N))], ["y"], inits)


def softshrink_dynamo(lam: float = 0.5, zero: float = 0.0, lam_sign: float | None = None):
    inits = {"t": _c(lam), "ls": _c(lam if lam_sign is None else lam_sign), "z": _c(zero)}
    nodes = [
        helper.make_node("Abs", ["x"], ["ab"]),
        helper.make_node("Greater", ["ab", "t"], ["g"]),
        helper.make_node("Sign", ["x"], ["sg"]),
        helper.make_node("Mul", ["sg", "ls"], ["m"]),
        helper.make_node("Sub", ["x", "m"], ["s"]),
        helper.make_node("Mul", ["x", "z"], ["zz"]),
        helper.make_node("Where", ["g", "s", "zz"], ["y"]),
    ]
    return make_model(nodes, [("x", (1, N))], ["y"], inits)


def gelu_tanh(form: str = "legacy", c: float = F32_C, k: float = F32_K, power: float = 3.0, extra_reader: bool = False):
    inits = {"c": _c(c), "k": _c(k), "one": _c(1.0), "half": _c(0.5), "p": _c(power)}
    if form == "legacy":
        nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["x", "sq"], ["cube"])]
    else:
        nodes = [helper.make_node("Pow", ["x", "p"], ["cube"])]
    nodes += [
        helper.make_node("Mul", ["c", "cube"], ["cc"]),
        helper.make_node("Add", ["x", "cc"], ["u"]),
        helper.make_node("Mul", ["k", "u"], ["ku"]),
        helper.make_node("Tanh", ["ku"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["g"]),
    ]
    if form == "legacy":
        nodes += [helper.make_node("Mul", ["x", "g"], ["xg"]), helper.make_node("Mul", ["half", "xg"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["half", "g"], ["hg"]), helper.make_node("Mul", ["x", "hg"], ["y"])]
    outs = ["y"]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["y", "t"], ["y2"]))
        outs = ["y2"]
    return make_model(nodes, [("x", (1, N))], outs, inits)


def run64(model, x: np.ndarray) -> np.ndarray:
    """The model's real-arithmetic function, in float64 (onnx reference evaluator)."""
    return runner(to_float64(model), backend="ref")({"x": np.asarray(x, np.float64).reshape(1, -1)})[0].ravel()


def dense_slope(model) -> float:
    """Largest secant slope of the elementwise model on the grid (a lower estimate of sup |f'|)."""
    return float(np.max(np.abs(np.diff(run64(model, GRID)) / np.diff(GRID))))


def test_gelu_tanh_constant_bounds_the_derivative() -> None:
    x = np.linspace(-30, 30, 1_200_001)
    for c, k in ((F32_C, F32_K), (0.044715, math.sqrt(2 / math.pi))):
        t = np.tanh(k * (x + c * x**3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
        top = float(np.abs(d).max())
        assert top <= GELU_TANH_SUP < top + 2e-4


@pytest.mark.parametrize(
    ("build", "op", "const"),
    [
        pytest.param(softsign, "Softsign", 1.0, id="softsign"),
        pytest.param(log_sigmoid, "Softplus", 1.0, id="logsigmoid"),
        pytest.param(softshrink_legacy, "Shrink", 1.0, id="softshrink-legacy"),
        pytest.param(softshrink_dynamo, "Shrink", 1.0, id="softshrink-dynamo"),
        pytest.param(gelu_tanh, "Gelu", GELU_TANH_SUP, id="gelu-tanh-legacy"),
        pytest.param(lambda: gelu_tanh("dynamo"), "Gelu", GELU_TANH_SUP, id="gelu-tanh-dynamo"),
    ],
)
def test_recognised_sound_and_tight(build, op, const) -> None:
    m = build()
    a = analyze(m)
    assert op in [n.op_type for n in a.nodes]
    assert a.bound == pytest.approx(const, rel=1e-12)
    slope = dense_slope(m)
    assert a.bound >= slope
    assert slope > 0.99 * const  # the sampled slope comes close: the constant is tight


@pytest.mark.parametrize("build", [softsign, log_sigmoid, softshrink_legacy, softshrink_dynamo])
def test_standard_op_rewrite_keeps_the_function(build) -> None:
    m = build()
    g = build_graph(m)
    run_passes(g)
    assert all(n.domain == "ai.onnx" for n in g.nodes)
    before, after = run64(m, GRID * 1.7), run64(graph_to_model(g), GRID * 1.7)
    np.testing.assert_allclose(after, before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: softsign(one=2.0), id="softsign-add-2"),
        pytest.param(lambda: softsign(numer="nx"), id="softsign-other-numerator"),
        pytest.param(lambda: softsign(extra_reader=True), id="softsign-abs-read-outside"),
        pytest.param(lambda: log_sigmoid(extra_reader=True), id="logsigmoid-sigmoid-read-outside"),
        pytest.param(lambda: softshrink_legacy(sub=0.4), id="softshrink-legacy-jump"),
        pytest.param(lambda: softshrink_legacy(lo=-0.4), id="softshrink-legacy-other-low-threshold"),
        pytest.param(lambda: softshrink_legacy(lam=-0.5), id="softshrink-legacy-negative-lambda"),
        pytest.param(lambda: softshrink_dynamo(zero=1.0), id="softshrink-dynamo-x-times-1"),
        pytest.param(lambda: softshrink_dynamo(lam_sign=0.4), id="softshrink-dynamo-jump"),
        pytest.param(lambda: gelu_tanh(c=0.05), id="gelu-other-cubic"),
        pytest.param(lambda: gelu_tanh(k=0.8), id="gelu-other-inner"),
        pytest.param(lambda: gelu_tanh("dynamo", power=2.0), id="gelu-square"),
        pytest.param(lambda: gelu_tanh(extra_reader=True), id="gelu-tanh-read-outside"),
    ],
)
def test_near_miss_not_fused(build) -> None:
    with pytest.raises(UnsupportedModelError):
        analyze(build())


@pytest.mark.parametrize(
    ("lam", "bias", "ok"), [(0.5, 0.5, True), (0.0, 0.0, True), (0.5, 0.0, False), (-0.5, -0.5, False)]
)
def test_shrink_rule(lam: float, bias: float, ok: bool) -> None:
    m = make_model([helper.make_node("Shrink", ["x"], ["y"], lambd=lam, bias=bias)], [("x", (1, N))], ["y"])
    if not ok:
        with pytest.raises(UnsupportedModelError, match="Shrink"):
            analyze(m)
        return
    assert analyze(m).bound == 1.0 >= dense_slope(m)


def softplus_threshold(beta: float = 1.0, t: float = 20.0, passthrough: str = "x"):
    inits = {"b": _c(beta), "t": _c(t)}
    nodes = [helper.make_node("Neg", ["x"], ["nx"])]
    s = "x"
    if beta != 1.0:
        nodes.append(helper.make_node("Mul", ["x", "b"], ["bx"]))
        s = "bx"
    nodes += [helper.make_node("Softplus", [s], ["sp"]), helper.make_node("Greater", [s, "t"], ["g"])]
    sp = "sp"
    if beta != 1.0:
        nodes.append(helper.make_node("Div", ["sp", "b"], ["spb"]))
        sp = "spb"
    nodes.append(helper.make_node("Where", ["g", passthrough, sp], ["y"]))
    return make_model(nodes, [("x", (1, N))], ["y"], inits)


@pytest.mark.parametrize(("beta", "t", "jump"), [(1.0, 20.0, "2.1e-09"), (2.0, 10.0, "2.3e-05")])
def test_thresholded_softplus_refused_with_its_jump(beta: float, t: float, jump: str) -> None:
    m = softplus_threshold(beta, t)
    # The jump is real: the two branches differ at the switch (float64 reference run).
    x0 = t / beta
    below, above = run64(m, np.array([x0]))[0], run64(m, np.array([np.nextafter(x0, np.inf)]))[0]
    assert below - above == pytest.approx(float(jump), rel=0.05)
    with pytest.raises(UnsupportedModelError, match=f"jumps by {jump}"):
        analyze(m)


def test_thresholded_softplus_near_miss_is_refused_by_the_generic_rules() -> None:
    with pytest.raises(UnsupportedModelError, match="comparison"):
        analyze(softplus_threshold(passthrough="nx"))
