"""Elementwise arithmetic and joins: Add/Sub/Sum, Mul/Div by constants, Max/Min, Concat.

Mathematics: docs/composition.md (joins, broadcasting) and docs/operators.md (scales).
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64
from lipgraph.rules.registry import Bound, RuleContext, rule
from lipgraph.rules.shapes import broadcast_factor, scale_gain


def _weighted(ctx: RuleContext) -> list[tuple[float, int]]:
    """(L_i, broadcast multiplicity k_i) for each variable input."""
    out = []
    for i in ctx.variable_indices():
        lin = ctx.input_bounds[i]
        assert lin is not None
        out.append((lin, broadcast_factor(ctx, i)))
    return out


@rule("Add", "Sub", "Sum")
def add(ctx: RuleContext) -> Bound:
    """Add, Sub, Sum: ``sum_i sqrt(k_i) L_i`` over the variable inputs, k_i the broadcast multiplicity.

    Constants shift and do not count. Triangle inequality; exact for one variable input.
    Source: docs/composition.md (composition table, broadcasting).
    """
    parts = _weighted(ctx)
    total = sum(math.sqrt(k) * lin for lin, k in parts)
    if len(parts) == 1:
        lin, k = parts[0]
        return Bound(total, "shift by a constant" if k == 1 else f"shift, broadcast x{k}", factor=math.sqrt(k))
    return Bound(total, f"sum of {len(parts)} branches")


@rule("Mul")
def mul(ctx: RuleContext) -> Bound:
    """Mul by a constant c: ``max over x elements of sqrt(sum of c^2 over its broadcast copies)``.

    That is ``max |c|`` when c broadcasts onto x (per-channel scales). Two variable factors (gates,
    attention) are not globally Lipschitz: refused. Exact up to float64 rounding, rounded up (squares of tiny or
    huge constants are scaled by a power of two first). A scale a pass computed in float64 (the
    L2-pooling pass's ``sqrt(c / k)``, ``rho`` > 0) is multiplied by ``1 + rho``.
    Source: docs/operators.md; Higham 2002, Lemma 3.1.
    """
    var = ctx.variable_indices()
    if len(var) != 1:
        raise Refuse("a product of two tensors that depend on the input is not globally Lipschitz")
    i = var[0]
    c = ctx.const(1 - i)
    if c is None:
        raise Refuse("the constant factor has no known value")
    gain = scale_gain(ctx, i, c)
    if ctx.node.rho:  # a scale a pass computed in float64: the exact one is within rho |c| (Node.rho)
        gain = float(np.nextafter(gain * (1.0 + ctx.node.rho) * (1.0 + 4 * EPS64), np.inf))
    lin = ctx.input_bounds[i]
    assert lin is not None
    return Bound(gain * lin, "scale by a constant", factor=gain)


@rule("Div")
def div(ctx: RuleContext) -> Bound:
    """Div ``x / c`` by a constant: as Mul by ``1/c``. A variable divisor is not Lipschitz: refused.

    The float64 reciprocal's rounding is counted (the factor is ``max |1/c|`` moved up by 2 ulps).

    Source: docs/operators.md.
    """
    if ctx.is_variable(1):
        raise Refuse("dividing by a tensor that depends on the input is not Lipschitz")
    c = ctx.const(1)
    if c is None:
        raise Refuse("the divisor has no known value")
    c = np.asarray(c, dtype=np.float64)
    if np.any(c == 0):
        raise Refuse("division by zero in the constant divisor")
    gain = scale_gain(ctx, 0, 1.0 / c)
    # 1 / c is rounded to nearest (it may land an ulp below the exact reciprocal); a divisor a pass computed
    # (Node.rho) is within rho of exact: gamma_1 and rho on top, rounded up (Higham 2002, Lemma 3.1)
    # a divisor within rho |c'| of the exact c gives |1/c| <= |1/c'| / (1 - rho), not (1 + rho)
    if ctx.node.rho >= 0.5:
        raise Refuse(f"the divisor's recorded rounding ({ctx.node.rho:g} relative) is too large to bound 1/c")
    gain = float(np.nextafter(gain * (1.0 + 4 * EPS64) / (1.0 - ctx.node.rho), np.inf))
    lin = ctx.input_bounds[0]
    assert lin is not None
    return Bound(gain * lin, "scale by 1/constant", factor=gain)


@rule("Max", "Min")
def max_min(ctx: RuleContext) -> Bound:
    """Elementwise Max / Min: ``sqrt(sum_i k_i L_i^2)`` over variable inputs (k_i broadcast copies).

    Per element ``|max(a,b) - max(a',b')| <= max(|da|, |db|)``; with constants only, 1 (a clamp).
    A MaxMin unit (Max and Min of two halves joined by Concat) is recognised by a pass and gets 1.
    Source: docs/composition.md.
    """
    parts = _weighted(ctx)
    total = math.sqrt(sum(k * lin * lin for lin, k in parts))
    if len(parts) == 1:
        lin, k = parts[0]
        return Bound(total, "clamp by a constant", factor=math.sqrt(k))
    return Bound(total, f"elementwise {ctx.node.op_type.lower()} of {len(parts)} branches")


@rule("Concat")
def concat(ctx: RuleContext) -> Bound:
    """Concat: ``sqrt(sum_i L_i^2)`` over the variable inputs (constants add nothing). Exact join rule.

    Source: docs/composition.md.
    """
    lins = [b for b in ctx.input_bounds if b is not None]
    total = math.sqrt(sum(b * b for b in lins))
    if len(lins) == 1:
        return Bound(total, "concat with constants", factor=1.0)
    return Bound(total, f"concat of {len(lins)} branches")


@rule("Mean")
def mean(ctx: RuleContext) -> Bound:
    """Mean of n tensors: ``(1/n) sum_i sqrt(k_i) L_i`` (constants count in n). docs/composition.md."""
    n = sum(1 for j in range(len(ctx.node.inputs)) if ctx.has_input(j))
    total = sum(math.sqrt(k) * lin for lin, k in _weighted(ctx)) / max(n, 1)
    return Bound(total, f"mean of {n}")
