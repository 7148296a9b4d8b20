"""Elementwise activations: ``sup |f'|`` (docs/operators.md, "Activations").

Constants for GELU, SiLU and Mish are the numerically found suprema of ``|f'|`` rounded up in
the fourth decimal (checked in tests against a dense grid). Ops that are not globally Lipschitz
(Exp, Log, Sqrt, Reciprocal, Pow with exponent > 1) or not continuous (Sign, Round, ...) refuse.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.rules.registry import Bound, RuleContext, rule


def _unary(ctx: RuleContext, factor: float, method: str) -> Bound:
    _, lin = ctx.single_variable_input()
    return Bound(factor * lin, method, factor=factor)


@rule("Relu", "Abs", "Neg", "Tanh", "Softplus", "Softsign", "Sin", "Cos", "Atan", "Asinh")
def one_lipschitz(ctx: RuleContext) -> Bound:
    """Elementwise functions with ``sup |f'| = 1``: factor 1 (exact).

    Relu, Abs, Neg, Tanh, Softplus, Softsign, Sin, Cos, Atan, Asinh. Source: docs/operators.md.
    """
    return _unary(ctx, 1.0, "elementwise, |f'| <= 1")


@rule("Celu")
def celu(ctx: RuleContext) -> Bound:
    """Celu(alpha) ``max(0, x) + min(0, alpha (exp(x/alpha) - 1))``: 1 for alpha > 0 (exact).

    For x < 0 its derivative is ``exp(x/alpha) <= 1`` when alpha > 0. A negative alpha makes
    ``exp(x/alpha)`` grow without bound as x -> -inf (not Lipschitz): refused. Source: docs/operators.md.
    """
    alpha = float(ctx.attr("alpha", 1.0))
    if not alpha > 0:
        raise Refuse(f"Celu with alpha={alpha:g} <= 0 is not globally Lipschitz")
    return _unary(ctx, 1.0, f"elementwise, alpha={alpha:g}")


@rule("LeakyRelu")
def leaky_relu(ctx: RuleContext) -> Bound:
    """LeakyRelu(alpha): ``max(1, |alpha|)`` (exact). ONNX default alpha = 0.01. Source: docs/operators.md."""
    alpha = float(ctx.attr("alpha", 0.01))
    return _unary(ctx, max(1.0, abs(alpha)), f"elementwise, alpha={alpha:g}")


@rule("PRelu", broadcasts=True)
def prelu(ctx: RuleContext) -> Bound:
    """PRelu: ``max(1, max |slope|)`` over the constant slope tensor (exact when broadcast per channel).

    A slope that depends on the input is a product of two variable tensors: refused. A slope larger
    than x (ONNX Runtime broadcasts both ways) copies x: the registry adds ``sqrt(copies)``.
    Source: docs/operators.md.
    """
    if ctx.is_variable(1):
        raise Refuse("the PRelu slope depends on the input")
    slope = ctx.const(1)
    if slope is None:
        raise Refuse("the PRelu slope has no known value")
    return _unary(ctx, max(1.0, float(np.max(np.abs(slope))) if slope.size else 1.0), "elementwise, max |slope|")


@rule("Elu")
def elu(ctx: RuleContext) -> Bound:
    """Elu(alpha): ``max(1, alpha)`` for alpha >= 0 (slope alpha*exp(x) on x < 0); ``max(1, |alpha|)`` otherwise.

    Source: docs/operators.md.
    """
    alpha = float(ctx.attr("alpha", 1.0))
    return _unary(ctx, max(1.0, abs(alpha)), f"elementwise, alpha={alpha:g}")


@rule("Selu")
def selu(ctx: RuleContext) -> Bound:
    """Selu: ``gamma * max(1, alpha)`` (defaults 1.0507 * 1.6733 = 1.7581). Exact. Source: docs/operators.md."""
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return _unary(ctx, abs(gamma) * max(1.0, abs(alpha)), "elementwise, gamma*max(1,alpha)")


@rule("Sigmoid")
def sigmoid(ctx: RuleContext) -> Bound:
    """Sigmoid: 1/4 (its derivative peaks at 0). Exact. Source: docs/operators.md."""
    return _unary(ctx, 0.25, "elementwise, |f'| <= 1/4")


@rule("HardSigmoid")
def hard_sigmoid(ctx: RuleContext) -> Bound:
    """HardSigmoid ``max(0, min(1, alpha x + beta))``: ``|alpha|`` (ONNX default 0.2). Exact. docs/operators.md."""
    alpha = float(ctx.attr("alpha", 0.2))
    return _unary(ctx, abs(alpha), f"elementwise, alpha={alpha:g}")


@rule("HardSwish", since=14)
def hard_swish(ctx: RuleContext) -> Bound:
    """HardSwish ``x * relu6(x + 3) / 6``: slope ``(2x + 3)/6`` peaks at 1.5 at x = 3. Exact. docs/operators.md."""
    return _unary(ctx, 1.5, "elementwise, |f'| <= 1.5")


@rule("Gelu", since=20)
def gelu(ctx: RuleContext) -> Bound:
    """Gelu (erf and tanh forms): 1.1290, ``sup |f'|`` rounded up. docs/operators.md.

    The erf form peaks at x = sqrt(2) with 1.128904; the tanh form at x ~ 1.4185 with 1.128993
    (checked on a dense grid in tests/rules/test_activations.py).
    """
    return _unary(ctx, 1.1290, "elementwise, sup |f'| rounded up")


@rule("Mish", since=18)
def mish(ctx: RuleContext) -> Bound:
    """Mish ``x tanh(softplus(x))``: 1.0886 (``sup |f'|`` = 1.088498 at x ~ 1.49, rounded up). docs/operators.md."""
    return _unary(ctx, 1.0886, "elementwise, sup |f'| rounded up")


@rule("Erf")
def erf(ctx: RuleContext) -> Bound:
    """Erf: ``2/sqrt(pi)`` (its derivative at 0), rounded up. Exact. docs/operators.md."""
    return _unary(ctx, float(np.nextafter(2.0 / math.sqrt(math.pi), np.inf)), "elementwise, 2/sqrt(pi)")


@rule("Clip", broadcasts=True)
def clip(ctx: RuleContext) -> Bound:
    """Clip: 1 (a projection onto an interval). Bounds that depend on the input are refused. docs/operators.md."""
    if ctx.is_variable(1) or ctx.is_variable(2):
        raise Refuse("Clip bounds that depend on the input are not supported")
    return _unary(ctx, 1.0, "elementwise, projection")


@rule("Softmax", "LogSoftmax")
def softmax(ctx: RuleContext) -> Bound:
    """Softmax inside a graph: 1/2 (``v^T J v = Var_p(v) <= 1/2`` for unit v). docs/operators.md.

    A final Softmax is cut before the walk (certify the logits). LogSoftmax inside a graph is refused:
    it only appears as the final layer of classifiers, where the logits pass cuts it.
    """
    if ctx.node.op_type == "LogSoftmax":
        raise Refuse("LogSoftmax inside the graph is not supported (only as the final layer, where it is cut)")
    return _unary(ctx, 0.5, "softmax, ||J|| <= 1/2")


_NOT_LIPSCHITZ = {
    "Exp": "exp grows without bound (not globally Lipschitz)",
    "Log": "log is not Lipschitz near 0",
    "Sqrt": "sqrt is not Lipschitz near 0",
    "Reciprocal": "1/x is not Lipschitz near 0",
    "Sign": "sign is discontinuous",
    "Round": "round is discontinuous",
    "Floor": "floor is discontinuous",
    "Ceil": "ceil is discontinuous",
    "ArgMax": "argmax is discontinuous",
    "ArgMin": "argmin is discontinuous",
    "LpNormalization": "normalising by a data-dependent norm without epsilon is not Lipschitz",
    "Tan": "tan is not Lipschitz",
    "Acos": "acos is not Lipschitz near +-1",
    "Asin": "asin is not Lipschitz near +-1",
    "Acosh": "acosh is not Lipschitz near 1",
    "Atanh": "atanh is not Lipschitz near +-1",
    "Sinh": "sinh grows without bound",
    "Cosh": "cosh grows without bound",
    "ThresholdedRelu": "ThresholdedRelu jumps at its threshold (discontinuous)",
    "IsNaN": "a boolean test of the data is discontinuous",
    "IsInf": "a boolean test of the data is discontinuous",
    "Equal": "a comparison of the data is discontinuous",
    "Less": "a comparison of the data is discontinuous",
    "Greater": "a comparison of the data is discontinuous",
    "LessOrEqual": "a comparison of the data is discontinuous",
    "GreaterOrEqual": "a comparison of the data is discontinuous",
}


@rule(*_NOT_LIPSCHITZ)
def not_lipschitz(ctx: RuleContext) -> Bound:
    """Ops with no global Lipschitz constant (Exp, Log, Sqrt, Reciprocal) or discontinuous ones
    (Sign, Round, Floor, Ceil, ArgMax, comparisons): always refused with the reason. docs/operators.md.
    """
    raise Refuse(_NOT_LIPSCHITZ[ctx.node.op_type])


@rule("Pow", broadcasts=True)
def pow_(ctx: RuleContext) -> Bound:
    """Pow ``x^p`` with constant p: p = 1 is the identity (1); every other exponent is refused.

    ``x^p`` for p > 1 grows without bound and for p < 1 is not Lipschitz at 0; torch's L2-norm pooling
    chain ``Pow(2) -> AveragePool -> ... -> Pow(0.5)`` is recognised as a whole by a pass. docs/operators.md.
    """
    if ctx.is_variable(1):
        raise Refuse("an exponent that depends on the input is not supported")
    p = ctx.const(1)
    if p is None:
        raise Refuse("the exponent has no known value")
    if p.size and np.all(p == 1):
        return _unary(ctx, 1.0, "x^1")
    raise Refuse(f"x^{float(np.ravel(p)[0]):g} is not globally Lipschitz")
