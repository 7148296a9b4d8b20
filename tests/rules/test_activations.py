"""Activation constants against ``sup |f'|`` on a dense grid (SPEC sec. 4 "Activations", sec. 9).

For each op: a numpy implementation of f, itself checked against onnxruntime running the op (so
attribute semantics are the runtime's, not ours); ``sup |f'|`` by central differences on a fine grid;
the rule's constant must be >= it and, where the rule claims tightness, within 1e-3 of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy.special import erf as _erf

from lipgraph import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.rules.registry import all_rules
from tests.helpers.onnx_oracle import make_model, max_jacobian_norm, one_node, runner

GRID = np.linspace(-30.0, 30.0, 1_200_001)  # step 5e-5
H = 1e-6


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _f32(v: float) -> float:
    return float(np.float32(v))


def _elu(alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))


# (case id, op, attrs, numpy f, opset)
CASES: list[tuple[str, str, dict, Callable[[np.ndarray], np.ndarray], int]] = [
    ("relu", "Relu", {}, lambda x: np.maximum(x, 0), 13),
    ("abs", "Abs", {}, np.abs, 13),
    ("neg", "Neg", {}, np.negative, 13),
    ("tanh", "Tanh", {}, np.tanh, 13),
    ("softplus", "Softplus", {}, _softplus, 13),
    ("softsign", "Softsign", {}, lambda x: x / (1 + np.abs(x)), 13),
    ("sin", "Sin", {}, np.sin, 13),
    ("cos", "Cos", {}, np.cos, 13),
    ("atan", "Atan", {}, np.arctan, 13),
    ("asinh", "Asinh", {}, np.arcsinh, 13),
    ("celu", "Celu", {"alpha": 0.4}, lambda x: np.maximum(x, 0) + np.minimum(0, 0.4 * np.expm1(np.minimum(x, 0) / 0.4)),
     13),
    ("leaky", "LeakyRelu", {}, lambda x: np.where(x >= 0, x, 0.01 * x), 13),
    ("leaky_big", "LeakyRelu", {"alpha": -1.7}, lambda x: np.where(x >= 0, x, -1.7 * x), 13),
    ("elu", "Elu", {}, _elu(1.0), 13),
    ("elu_big", "Elu", {"alpha": 2.5}, _elu(2.5), 13),
    ("elu_small", "Elu", {"alpha": 0.3}, _elu(0.3), 13),
    ("selu", "Selu", {}, lambda x: 1.0507009873554805 * _elu(1.6732632423543772)(x), 13),
    ("selu_attrs", "Selu", {"alpha": 2.0, "gamma": 1.5}, lambda x: 1.5 * _elu(2.0)(x), 13),
    ("selu_small_alpha", "Selu", {"alpha": 0.5, "gamma": 0.8}, lambda x: 0.8 * _elu(0.5)(x), 13),
    ("sigmoid", "Sigmoid", {}, _sigmoid, 13),
    ("hardsigmoid", "HardSigmoid", {}, lambda x: np.clip(0.2 * x + 0.5, 0, 1), 13),
    # Float attributes are stored as float32: the runtime's slope is float32(0.7), not 0.7.
    ("hardsigmoid_attrs", "HardSigmoid", {"alpha": 0.7, "beta": 0.1},
     lambda x: np.clip(_f32(0.7) * x + _f32(0.1), 0, 1), 13),
    ("hardsigmoid_neg", "HardSigmoid", {"alpha": -1.3, "beta": 0.4},
     lambda x: np.clip(_f32(-1.3) * x + _f32(0.4), 0, 1), 13),
    ("hardswish", "HardSwish", {}, lambda x: x * np.clip(x / 6 + 0.5, 0, 1), 14),
    ("gelu", "Gelu", {}, lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))), 20),
    ("gelu_tanh", "Gelu", {"approximate": "tanh"},
     lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))), 20),
    ("mish", "Mish", {}, lambda x: x * np.tanh(_softplus(x)), 18),
    ("erf", "Erf", {}, _erf, 13),
]


def _sup_derivative(f: Callable[[np.ndarray], np.ndarray]) -> float:
    d = (f(GRID + H) - f(GRID - H)) / (2 * H)
    return float(np.max(np.abs(d)))


def _rule_constant(op: str, attrs: dict, opset: int) -> float:
    return analyze(one_node(op, [1, 16], opset=opset, **attrs)).bound


@pytest.mark.parametrize("case, op, attrs, f, opset", CASES, ids=[c[0] for c in CASES])
def test_activation_constant_is_sup_of_derivative(case: str, op: str, attrs: dict, f, opset: int) -> None:
    model = one_node(op, [1, 4001], opset=opset, **attrs)
    # The numpy f is the op as onnxruntime computes it (this is what makes the grid an oracle).
    xs = np.linspace(-8, 8, 4001).astype(np.float32)
    got = runner(model)({"x": xs.reshape(1, -1)})[0].ravel().astype(np.float64)
    np.testing.assert_allclose(got, f(xs.astype(np.float64)), rtol=2e-5, atol=2e-6)
    sup = _sup_derivative(f)
    bound = _rule_constant(op, attrs, opset)
    assert bound >= sup * (1 - 1e-8), (bound, sup)  # 1e-8: rounding of the differences
    assert bound <= sup + 1e-3, (bound, sup)


_TIGHT = [c for c in CASES if c[0] in ("gelu", "gelu_tanh", "mish", "selu_attrs", "hardswish", "sigmoid")]


@pytest.mark.parametrize("case, op, attrs, f, opset", _TIGHT, ids=[c[0] for c in _TIGHT])
def test_activation_jacobian_below_bound(case: str, op: str, attrs: dict, f, opset: int) -> None:
    # At the arg-sup of |f'| (plus random points) the model's secant ratio approaches the constant.
    d = np.abs((f(GRID + H) - f(GRID - H)) / (2 * H))
    peak = float(GRID[np.argmax(d)])
    model = one_node(op, [1, 3], opset=opset, **attrs)
    # Just left of the peak: for Selu and HardSwish the sup sits at a kink's left edge.
    pts = [np.full(3, peak - 3e-3), np.random.default_rng(0).standard_normal(3)]
    bound = analyze(model).bound
    lower = max_jacobian_norm(model, [1, 3], points=pts, h=1e-3)  # onnx.reference's Erf is noisy at 1e-8
    assert lower <= bound * (1 + 1e-6)
    assert lower >= bound * (1 - 1e-2)  # the constant is attained (up to the offset from the peak)


def test_prelu_slope_tensor() -> None:
    slope = np.array([0.1, -2.3, 0.7], dtype=np.float32).reshape(1, 3, 1)
    model = one_node("PRelu", [1, 3, 4], {"slope": slope})
    bound = analyze(model).bound
    assert bound == pytest.approx(2.3, rel=1e-6)
    pts = [np.full(12, -1.0), np.random.default_rng(1).standard_normal(12)]
    assert max_jacobian_norm(model, [1, 3, 4], points=pts) == pytest.approx(2.3, rel=1e-5)


@pytest.mark.parametrize("opset, consts, attrs", [
    (13, {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}, {}),
    (6, {}, {"min": -0.5, "max": 0.5}),
])
def test_clip(opset: int, consts: dict, attrs: dict) -> None:
    model = one_node("Clip", [1, 5], consts, opset=opset, **attrs)
    bound = analyze(model).bound
    assert bound == 1.0
    pts = [np.full(5, 0.1), np.random.default_rng(2).standard_normal(5)]
    assert max_jacobian_norm(model, [1, 5], points=pts) == pytest.approx(1.0, rel=1e-6)


def test_softmax_inside_graph_is_half() -> None:
    # A Softmax followed by a scale is not the final layer: the 1/2 rule applies (SPEC sec. 4).
    from onnx import helper

    nodes = [helper.make_node("Softmax", ["x"], ["p"], axis=-1), helper.make_node("Mul", ["p", "c"], ["y"])]
    model = make_model(nodes, [("x", [1, 4])], ["y"], {"c": np.array(3.0, np.float32)})
    bound = analyze(model).bound
    assert bound == pytest.approx(1.5)
    pts = [np.array([5.0, 5.0, -20.0, -20.0])] + [np.random.default_rng(s).standard_normal(4) for s in range(6)]
    lower = max_jacobian_norm(model, [1, 4], points=pts)
    assert lower <= bound * (1 + 1e-6)
    assert lower >= 1.5 * 0.49  # two equal logits and the rest far below: the sup is attained


@pytest.mark.parametrize("op, consts", [
    ("Exp", {}), ("Log", {}), ("Sqrt", {}), ("Reciprocal", {}), ("Sign", {}), ("Round", {}), ("Floor", {}),
    ("Ceil", {}), ("Tan", {}), ("Sinh", {}), ("Cosh", {}), ("ThresholdedRelu", {}),
    ("Pow", {"p": np.array(2.0, np.float32)}), ("Pow", {"p": np.array(0.5, np.float32)}),
])
def test_not_lipschitz_refused(op: str, consts: dict) -> None:
    with pytest.raises(UnsupportedModelError, match=op):
        analyze(one_node(op, [1, 3], consts))


@pytest.mark.parametrize("alpha", [-1.0, -0.3])
def test_celu_negative_alpha_refused(alpha: float) -> None:
    # With alpha < 0, Celu(-10) = alpha (exp(-10 / alpha) - 1) is huge: no Lipschitz constant.
    model = one_node("Celu", [1, 2], alpha=alpha)
    out = runner(model)({"x": np.array([[-10.0, -11.0]], np.float32)})[0].ravel()
    assert abs(out[0] - out[1]) > 100  # the oracle: a secant far above any constant
    with pytest.raises(UnsupportedModelError, match="Celu"):
        analyze(model)


def test_pow_one_is_identity() -> None:
    assert analyze(one_node("Pow", [1, 3], {"p": np.array(1.0, np.float32)})).bound == 1.0


def test_logsoftmax_inside_graph_refused() -> None:
    from onnx import helper

    nodes = [helper.make_node("LogSoftmax", ["x"], ["p"]), helper.make_node("Mul", ["p", "c"], ["y"])]
    with pytest.raises(UnsupportedModelError, match="LogSoftmax"):
        analyze(make_model(nodes, [("x", [1, 4])], ["y"], {"c": np.array(2.0, np.float32)}))


def test_every_registered_rule_has_a_docstring() -> None:
    rules = all_rules()
    assert len(rules) > 40
    for spec in rules:
        assert spec.doc.strip(), f"{spec.domain}:{spec.op_type} has no docstring"
        assert spec.summary.strip(), f"{spec.domain}:{spec.op_type} has an empty summary line"
