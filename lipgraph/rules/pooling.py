"""Pooling and reductions (docs/operators.md "Pooling").

Window counts come from :mod:`lipgraph.norms.pooling`, which follows the ONNX output-size formulas
(pads, ``auto_pad``, ``ceil_mode``, dilations) exactly and counts per axis.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64
from lipgraph.norms.pooling import (
    AxisPool,
    avg_pool_norm,
    axis_out_sizes,
    overlap_any_size,
    pool_overlap,
)
from lipgraph.rules.registry import Bound, RuleContext, rule


def _up(x: float) -> float:
    """Round a float64 result of a few operations up (sqrt, pow, products)."""
    return float(np.nextafter(x * (1 + 8 * EPS64), np.inf))


def output_unused(ctx: RuleContext, i: int) -> bool:
    """True when output ``i`` is absent or nothing reads it (so its bound never matters)."""
    if i >= len(ctx.node.outputs) or not ctx.node.outputs[i]:
        return True
    name = ctx.node.outputs[i]
    return not ctx.graph.consumers(name) and not ctx.graph.is_graph_output(name)


def _pool_axes(ctx: RuleContext) -> tuple[list[AxisPool], list[int | None], bool]:
    """Per-axis geometry, spatial sizes (None when unknown) and whether the inferred output shape
    agrees with the ONNX formulas (False: use only bounds that hold for any window placement)."""
    kernel = ctx.attr("kernel_shape")
    if not kernel:
        raise Refuse("kernel_shape is missing")
    nd = len(kernel)
    strides = list(ctx.attr("strides") or [1] * nd)
    dilations = list(ctx.attr("dilations") or [1] * nd)
    pads = list(ctx.attr("pads") or [0] * (2 * nd))
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if len(strides) != nd or len(dilations) != nd or len(pads) != 2 * nd:
        raise Refuse("kernel_shape, strides, dilations and pads have inconsistent lengths")
    if any(p < 0 for p in pads):
        raise Refuse("negative pads are not supported")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    try:
        axes = [
            AxisPool(int(kernel[d]), int(strides[d]), int(dilations[d]), int(pads[d]), int(pads[nd + d]),
                     str(auto_pad), ceil_mode)
            for d in range(nd)
        ]
    except ValueError as exc:
        raise Refuse(f"invalid pooling attributes: {exc}") from None
    shape = ctx.in_shape(0)
    if shape is not None and len(shape) != nd + 2:
        raise Refuse(f"input rank {len(shape)} does not match a {nd}-D kernel")
    sizes: list[int | None] = list(shape[2:]) if shape is not None else [None] * nd
    agrees = True
    out = ctx.out_shape(0)
    if out is not None and len(out) == nd + 2:
        for d, (ax, n) in enumerate(zip(axes, sizes, strict=True)):
            if n is not None and out[2 + d] is not None and out[2 + d] not in axis_out_sizes(ax, n):
                agrees = False
    return axes, sizes, agrees


def _overlap(axes: list[AxisPool], sizes: list[int | None], agrees: bool) -> tuple[int, str]:
    if agrees:
        m = pool_overlap(axes, sizes)
        how = "exact window count" if all(n is not None for n in sizes) else "window count, unknown sizes"
    else:
        m = math.prod(overlap_any_size(ax) for ax in axes)
        how = "size-independent window count (inferred output shape differs from the ONNX formula)"
    return m, how


@rule("MaxPool")
def max_pool(ctx: RuleContext) -> Bound:
    """MaxPool: ``sqrt(m)``, ``m`` = the largest number of windows containing one input element.

    Each output moves by at most the largest change in its window, ``|max a - max b| <= ||a - b||_inf``,
    and each element feeds at most ``m`` outputs, so ``||dy||^2 <= m ||dx||^2``. ``m`` is counted exactly
    per axis from kernel, stride, dilation, pads, ``auto_pad`` and ``ceil_mode`` (product of per-axis
    maxima; an axis of unknown length uses ``ceil(k gcd(d, s) / s)``, valid for every length). 1 for
    non-overlapping windows; overlapping ones are NOT 1-Lipschitz (``[1,2,1,2,1]``, k = 2, s = 1 ->
    ``[2,2,2,2]``). Tight for non-overlapping windows. Source: docs/operators.md; LMT (Tsuzuku et al. 2018).
    The optional Indices output is integer data and may not feed the data path.
    """
    _, lin = ctx.single_variable_input()
    if not output_unused(ctx, 1):
        raise Refuse("the Indices output of MaxPool is used (data-dependent indices are discontinuous)")
    axes, sizes, agrees = _pool_axes(ctx)
    m, how = _overlap(axes, sizes, agrees)
    factor = _up(math.sqrt(m))
    outs = [factor * lin] + [0.0] * (len(ctx.node.outputs) - 1)  # Indices: unused (checked above)
    return Bound(outs, f"sqrt(overlap {m}), {how}", factor=factor, lower=1.0 if m >= 1 else 0.0)


@rule("AveragePool")
def average_pool(ctx: RuleContext) -> Bound:
    """AveragePool: the norm of the averaging operator (linear).

    With known spatial sizes: exact, the product of the per-axis averaging matrices' spectral norms
    (the divisor is a product of per-axis counts, so the operator is a Kronecker product), with the SVD
    rounding allowance. Unknown sizes: the Schur test ``sqrt(max_i sum_{j containing i} 1/m_j)`` per axis
    (times the max row sum, 1), taken as the supremum over every axis length. ``count_include_pad = 0``
    (the default) and ``ceil_mode`` shrink the border divisors ``m_j``, which raises the norm above
    ``1/sqrt(prod k)``; ``k = s`` without pads gives exactly ``1/sqrt(prod k)``. If the inferred output
    shape disagrees with the ONNX formulas: ``sqrt(prod ceil(k gcd(d,s)/s))`` (every coefficient <= 1).
    Source: docs/operators.md
    """
    _, lin = ctx.single_variable_input()
    axes, sizes, agrees = _pool_axes(ctx)
    cip = bool(ctx.attr("count_include_pad", 0))
    if not agrees:
        m = math.prod(overlap_any_size(ax) for ax in axes)
        factor = _up(math.sqrt(m))
        return Bound(factor * lin, f"sqrt(overlap {m}), output shape differs from the ONNX formula",
                     factor=factor)
    nb = avg_pool_norm(axes, sizes, cip)
    return Bound(nb.value * lin, nb.method, factor=nb.value, lower=nb.lower)


@rule("LpPool")
def lp_pool(ctx: RuleContext) -> Bound:
    """LpPool: ``sqrt(m) * max(1, K^(1/p - 1/2))``, ``m`` as for MaxPool, ``K = prod kernel``.

    Each output is the p-norm of its window, and ``| ||a||_p - ||b||_p | <= ||a - b||_p <=
    max(1, K^(1/p-1/2)) ||a - b||_2`` (Hoelder for p < 2); each element feeds at most ``m`` outputs.
    Exact for p = 2 without overlap (1). Padding adds zeros, which do not change a p-norm.
    Source: docs/operators.md. Refused for p < 1 (not a norm).
    """
    _, lin = ctx.single_variable_input()
    p = float(ctx.attr("p", 2))
    if not p >= 1:
        raise Refuse(f"LpPool with p = {p:g} < 1 is not a norm")
    axes, sizes, agrees = _pool_axes(ctx)
    m, how = _overlap(axes, sizes, agrees)
    k = math.prod(ax.kernel for ax in axes)
    holder = max(1.0, k ** (1.0 / p - 0.5))
    factor = _up(math.sqrt(m) * holder)
    return Bound(factor * lin, f"sqrt(overlap {m}) * {holder:.4g} (p = {p:g}), {how}", factor=factor)


def _spatial_count(ctx: RuleContext) -> int | None:
    shape = ctx.in_shape(0)
    if shape is None or len(shape) < 2:
        return None
    sp = shape[2:]
    return None if any(d is None for d in sp) else math.prod(int(d) for d in sp)


@rule("GlobalAveragePool")
def global_average_pool(ctx: RuleContext) -> Bound:
    """GlobalAveragePool: ``1/sqrt(H W ...)``, exact (the mean of q numbers has gradient 1/q in each).

    With an unknown spatial size: 1 (q >= 1), sound but loose. Source: docs/operators.md.
    """
    _, lin = ctx.single_variable_input()
    q = _spatial_count(ctx)
    if q is None:
        return Bound(lin, "mean, unknown spatial size (<= 1)", factor=1.0)
    factor = _up(1.0 / math.sqrt(q)) if q > 0 else 0.0
    return Bound(factor * lin, f"mean of {q}: 1/sqrt({q})", factor=factor, lower=1.0 / math.sqrt(q) if q else 0.0)


@rule("GlobalMaxPool")
def global_max_pool(ctx: RuleContext) -> Bound:
    """GlobalMaxPool: 1 (one window per channel; ``|max a - max b| <= ||a - b||_inf``). Exact. docs/operators.md."""
    _, lin = ctx.single_variable_input()
    return Bound(lin, "max over disjoint windows", factor=1.0, lower=1.0)


@rule("GlobalLpPool")
def global_lp_pool(ctx: RuleContext) -> Bound:
    """GlobalLpPool: ``max(1, q^(1/p - 1/2))`` with q the spatial size (1 for p >= 2).

    One p-norm per channel over disjoint sets (Hoelder for p < 2, which needs a known q). docs/operators.md.
    """
    _, lin = ctx.single_variable_input()
    p = float(ctx.attr("p", 2))
    if not p >= 1:
        raise Refuse(f"GlobalLpPool with p = {p:g} < 1 is not a norm")
    if p >= 2:
        return Bound(lin, f"p-norm per channel (p = {p:g})", factor=1.0)
    q = _spatial_count(ctx)
    if q is None:
        raise Refuse(f"GlobalLpPool with p = {p:g} < 2 needs a known spatial size")
    factor = _up(max(1.0, q ** (1.0 / p - 0.5)))
    return Bound(factor * lin, f"p-norm per channel, Hoelder q^(1/p-1/2), q = {q}", factor=factor)


# ---------------------------------------------------------------------------------------- reductions

# Opset from which ``axes`` is an input instead of an attribute.
_AXES_INPUT_SINCE = {"ReduceSum": 13}
_AXES_INPUT_DEFAULT = 18


def reduced_count(ctx: RuleContext) -> tuple[int | None, bool]:
    """``(q, noop)``: the number of input elements folded into one output (None: unknown), and
    whether the node is the identity (empty axes with ``noop_with_empty_axes = 1``)."""
    op = ctx.node.op_type
    if ctx.opset >= _AXES_INPUT_SINCE.get(op, _AXES_INPUT_DEFAULT):
        if ctx.is_variable(1):
            raise Refuse("reduction axes that depend on the input are not supported")
        if ctx.has_input(1):
            val = ctx.const(1)
            if val is None:
                raise Refuse("the reduction axes have no known value")
            axes = [int(a) for a in np.asarray(val).ravel()]
        else:
            axes = []
        if not axes and int(ctx.attr("noop_with_empty_axes", 0)):
            return 1, True
    else:
        axes = [int(a) for a in (ctx.attr("axes") or [])]
    shape = ctx.in_shape(0)
    if shape is None:
        return None, False
    rank = len(shape)
    if rank == 0:
        return 1, False
    if any(not -rank <= a < rank for a in axes):
        raise Refuse(f"reduction axes {axes} out of range for rank {rank}")
    uniq = {a % rank for a in axes} if axes else set(range(rank))
    dims = [shape[a] for a in uniq]
    return (None if any(d is None for d in dims) else math.prod(int(d) for d in dims)), False


@rule("ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp")
def reduce_one(ctx: RuleContext) -> Bound:
    """ReduceMax, ReduceMin, ReduceL2, ReduceLogSumExp: 1.

    Each output depends on a disjoint set of inputs and is 1-Lipschitz in L2 on it (max/min: the
    change is at most the sup-norm of the change; L2 norm: triangle inequality; log-sum-exp: its
    gradient is a probability vector, of L2 norm <= 1). Exact for max/min/L2. docs/operators.md.
    """
    _, lin = ctx.single_variable_input()
    reduced_count(ctx)  # validates the axes (refuses data-dependent ones)
    return Bound(lin, "1-Lipschitz per disjoint group", factor=1.0)


@rule("ReduceMean")
def reduce_mean(ctx: RuleContext) -> Bound:
    """ReduceMean over q elements: ``1/sqrt(q)`` (exact); unknown q: 1 (q >= 1, sound). docs/operators.md."""
    _, lin = ctx.single_variable_input()
    q, noop = reduced_count(ctx)
    if noop:
        return Bound(lin, "no-op (empty axes)", factor=1.0)
    if q is None or q == 0:
        return Bound(lin, "mean, unknown or empty count (<= 1)", factor=1.0)
    factor = _up(1.0 / math.sqrt(q))
    return Bound(factor * lin, f"mean of {q}: 1/sqrt({q})", factor=factor, lower=1.0 / math.sqrt(q))


@rule("ReduceSum", "ReduceL1")
def reduce_sum(ctx: RuleContext) -> Bound:
    """ReduceSum and ReduceL1 over q elements: ``sqrt(q)`` (exact: the all-ones row has norm sqrt(q);
    ``| ||a||_1 - ||b||_1 | <= ||a - b||_1 <= sqrt(q) ||a - b||_2``). Unknown q: refused. docs/operators.md.
    """
    _, lin = ctx.single_variable_input()
    q, noop = reduced_count(ctx)
    if noop:
        return Bound(lin, "no-op (empty axes)", factor=1.0)
    if q is None:
        raise Refuse("the number of reduced elements is unknown (ReduceSum's constant is sqrt of it)")
    factor = _up(math.sqrt(q))
    return Bound(factor * lin, f"sum of {q}: sqrt({q})", factor=factor, lower=math.sqrt(q))


@rule("ReduceSumSquare", "ReduceProd", "ReduceLogSum")
def reduce_not_lipschitz(ctx: RuleContext) -> Bound:
    """ReduceSumSquare, ReduceProd (grow without bound) and ReduceLogSum (log near 0): not globally
    Lipschitz; always refused. docs/operators.md (Exp, Log, Pow > 1)."""
    reasons = {
        "ReduceSumSquare": "a sum of squares grows without bound (not globally Lipschitz)",
        "ReduceProd": "a product of inputs is not globally Lipschitz",
        "ReduceLogSum": "log of a sum is not Lipschitz near 0",
    }
    raise Refuse(reasons[ctx.node.op_type])
