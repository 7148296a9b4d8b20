"""Shape helpers shared by rules: broadcast multiplicities from static shapes."""

from __future__ import annotations

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.rules.registry import RuleContext


def _aligned(shape: tuple[int | None, ...], rank: int) -> tuple[int | None, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


def _assume_no_broadcast(ctx: RuleContext) -> None:
    """Both an operand's and the output's size on an axis are symbolic (not the batch: it is fixed to 1).

    Broadcasting would need the operand to be 1 there while the output is not. Operands of residual
    joins share their size, so this is taken as "no broadcast" -- an assumption, said out loud with
    the node; `certify` fixes the sizes from its data and needs none.
    """
    note = "symbolic dimensions assumed equal (not broadcast); fix the input size for a proof"
    if note not in ctx.notes:
        ctx.notes.append(note)


def broadcast_factor(ctx: RuleContext, i: int) -> int:
    """How many times each element of input ``i`` appears in the output under broadcasting.

    Uses the static shapes; an unknown dimension is accepted only where the input has the same
    unknown dimension as the output (a symbolic batch axis), otherwise the rule refuses.
    """
    in_shape = ctx.in_shape(i)
    out_shape = ctx.out_shape(0)
    if in_shape is None or out_shape is None:
        # Shapes unknown: fall back to the broadcast of the other inputs' known shapes.
        shapes = [ctx.in_shape(j) for j in range(len(ctx.node.inputs)) if ctx.has_input(j)]
        # Every other operand has rank <= ours, and none of our axes has length 1 (or unknown),
        # so broadcasting cannot repeat our elements.
        if (
            in_shape is not None
            and all(s is not None and len(s) <= len(in_shape) for s in shapes)
            and all(d is not None and d != 1 for d in in_shape)
        ):
            return 1
        raise Refuse(f"cannot tell how often input '{ctx.node.inputs[i]}' is broadcast (unknown shapes)")
    rank = len(out_shape)
    a = _aligned(in_shape, rank)
    k = 1
    for din, dout in zip(a, out_shape, strict=True):
        if din is None and dout is None:
            _assume_no_broadcast(ctx)
            continue
        if din == dout:
            continue
        if din == 1 and dout is not None:
            k *= int(dout)
        elif din is None and dout is not None:
            # Unknown input dim against a known output dim: it is either equal or 1.
            k *= int(dout)
        else:
            raise Refuse(f"cannot tell how often input '{ctx.node.inputs[i]}' is broadcast (symbolic dims)")
    return k


def scale_gain(ctx: RuleContext, var_idx: int, scale: np.ndarray) -> float:
    """Norm of ``x -> broadcast(x) * scale`` elementwise: ``max over x elements of sqrt(sum c^2)``.

    The sum runs over the copies that broadcasting makes of each element of x.
    """
    scale = np.abs(np.asarray(scale, dtype=np.float64))
    in_shape = ctx.in_shape(var_idx)
    out_shape = ctx.out_shape(0)
    if in_shape is None or out_shape is None:
        if scale.size == 1:
            return float(scale.max()) * float(np.sqrt(broadcast_factor(ctx, var_idx)))
        in_shape = in_shape or tuple([None] * scale.ndim)
        out_shape = out_shape or in_shape
    rank = max(len(out_shape), scale.ndim)
    xs = _aligned(in_shape, rank)
    outs = _aligned(out_shape, rank)
    sc = scale.reshape((1,) * (rank - scale.ndim) + scale.shape)
    # Axes along which x is broadcast (x has 1, the output has more): sum c^2 over them.
    k_extra = 1
    sq = sc * sc
    for ax in range(rank):
        dx, do, dc = xs[ax], outs[ax], sc.shape[ax]
        if (dx == 1 or dx is None) and (do is None or do > 1):
            if dc > 1:
                sq = sq.sum(axis=ax, keepdims=True)
            elif do is not None:
                k_extra *= int(do)
            elif dx is None:
                _assume_no_broadcast(ctx)
                continue
            else:
                raise Refuse("cannot tell how often the input is broadcast (symbolic dims)")
    return float(np.sqrt(sq.max() * k_extra)) if sq.size else 0.0
