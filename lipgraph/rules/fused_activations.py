"""Rules for activations that exporters spell out in primitive ops, once a pass has recognised them.

``Shrink`` is a standard op (torch's Softshrink becomes one, lipgraph/passes/elementwise_patterns.py);
``lipgraph:SoftplusThreshold`` and ``lipgraph:PowerMeanPool`` are fused nodes made by the passes
(lipgraph/passes/elementwise_patterns.py, lipgraph/passes/lppool.py). torch's tanh-form GELU becomes a
``lipgraph:Gelu`` with ``approximate = "tanh"`` (rule in lipgraph/rules/groupsort.py).
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule


@rule("Shrink", since=9)
def shrink(ctx: RuleContext) -> Bound:
    """Shrink(lambd, bias) with ``bias == lambd >= 0`` (torch's Softshrink): 1 (exact).

    ``y = x - b`` above l, ``x + b`` below -l, 0 between: with ``b = l`` the pieces meet at +-l, so the
    function is continuous with slope 0 or 1. ``b != l`` jumps by ``|l - b|`` at +-l (not Lipschitz)
    and ``l < 0`` overlaps the branches: both refused. Source: the ONNX Shrink definition.
    """
    lam = float(ctx.attr("lambd", 0.5))
    bias = float(ctx.attr("bias", 0.0))
    if not (lam >= 0.0 and math.isfinite(lam)):
        raise Refuse(f"Shrink with lambd={lam:g} < 0 overlaps its two branches")
    if bias != lam:
        raise Refuse(
            f"Shrink with bias={bias:g} != lambd={lam:g} jumps by {abs(lam - bias):g} at +-lambd (discontinuous)"
        )
    _, lin = ctx.single_variable_input()
    return Bound(lin, "soft threshold, slope 0 or 1", factor=1.0, lower=1.0)


@rule("SoftplusThreshold", domain=LIPGRAPH_DOMAIN)
def softplus_threshold(ctx: RuleContext) -> Bound:
    """torch's Softplus(beta, threshold) as the dynamo exporter writes it: refused (it jumps).

    ``Where(beta x > t, x, log(1 + exp(beta x)) / beta)``: at ``x = t / beta`` the branches differ by
    ``log1p(exp(-t)) / beta`` (2.1e-9 for torch's defaults), so in real arithmetic the function is
    discontinuous and no Lipschitz constant holds, however small the jump. Carrying the jump as an
    additive term of the certificate is not implemented; the legacy exporter writes one ``Softplus`` op
    (1-Lipschitz), which is accepted.
    """
    beta = float(ctx.attr("beta", 1.0))
    t = float(ctx.attr("threshold", 20.0))
    jump = math.log1p(math.exp(-t)) / abs(beta) if beta != 0 and t > -700 else float("inf")
    raise Refuse(
        f"torch's thresholded Softplus (beta={beta:g}, threshold={t:g}) jumps by {jump:.2g} at x = threshold/beta "
        "(discontinuous); export with torch.onnx.export(..., dynamo=False), which writes a plain Softplus"
    )


@rule("PowerMeanPool", domain=LIPGRAPH_DOMAIN)
def power_mean_pool(ctx: RuleContext) -> Bound:
    """``(c * AveragePool(x^p))^(1/p)`` for an even integer p (torch's LPPool): ``sqrt(max_i sum_j w_ji^2)``.

    Output j is ``(sum_i (c a_ji) |x_i|^p)^(1/p) = ||W_j x||_p``, ``W_j = diag((c a_ji)^(1/p))`` over its
    window (a_ji the averaging weights). Then ``|y_j(x) - y_j(x')| <= ||W_j dx||_p <= ||W_j dx||_2``
    for p >= 2, so ``||dy||^2 <= max_i sum_j w_ji^2 ||dx||^2`` (sum over the windows holding i). The
    weights come from the per-axis averaging matrices with the divisor counting real elements only
    (the smallest divisor any convention uses, so each weight is an upper bound); their Kronecker
    structure makes the max a product of per-axis maxima. Exact for non-overlapping windows (each
    element in one window: the largest weight). Source: Hoelder's inequality; the pooling window counts
    of Tsuzuku, Sato, Sugiyama 2018.
    """
    from lipgraph.norms import EPS64
    from lipgraph.norms.pooling import AxisPool, axis_avg_matrix, axis_out_sizes

    _, lin = ctx.single_variable_input()
    p = int(ctx.attr("p", 2))
    c = float(ctx.attr("scale", 1.0))
    if p < 2 or p % 2 or not (c > 0 and math.isfinite(c)):
        raise Refuse(f"power-mean pooling with p={p}, scale={c:g} is not a norm")
    kernel = [int(k) for k in ctx.attr("kernel_shape", [])]
    nd = len(kernel)
    strides = [int(s) for s in ctx.attr("strides", [1] * nd)]
    pads = [int(q) for q in ctx.attr("pads", [0] * (2 * nd))]
    shape = ctx.in_shape(0)
    if shape is None or len(shape) != nd + 2 or any(d is None for d in shape[2:]):
        raise Refuse("power-mean pooling needs known spatial sizes")
    out = ctx.out_shape(0)
    factor = 1.0
    for d in range(nd):
        ax = AxisPool(kernel[d], strides[d], 1, pads[d], pads[nd + d], "NOTSET", bool(ctx.attr("ceil_mode", 0)))
        n = int(shape[2 + d])  # type: ignore[arg-type]
        if (
            out is not None
            and len(out) == nd + 2
            and out[2 + d] is not None
            and out[2 + d] not in axis_out_sizes(ax, n)
        ):
            raise Refuse("the pooled output shape differs from the ONNX formula")
        a = axis_avg_matrix(ax, n, count_include_pad=False)  # the largest weights any divisor gives
        w2 = np.power(kernel[d] * a, 2.0 / p)  # per-axis share of (c a_ji)^(2/p); c enters below
        factor *= float(w2.sum(axis=0).max()) if w2.size else 0.0
    k_total = math.prod(kernel)
    factor = math.sqrt(factor * (c / k_total) ** (2.0 / p))
    factor = float(np.nextafter(factor * (1 + 16 * (nd + 2) * EPS64), np.inf))
    return Bound(factor * lin, f"p-norm pooling (p = {p}), per-window weights", factor=factor)
