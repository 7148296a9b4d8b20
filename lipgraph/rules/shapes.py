"""Shape helpers shared by rules: broadcast multiplicities from static shapes."""

from __future__ import annotations

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.rules.registry import RuleContext


def _aligned(shape: tuple[int | None, ...], rank: int) -> tuple[int | None, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


SYMBOLIC_HINT = "fix the input size with --input-shape (certify uses its data's size)"


def _dim_param(ctx: RuleContext, name: str, axis_from_end: int) -> str | None:
    """The symbolic name shape inference gave ``name`` on an axis counted from the end, if any."""
    t = ctx.graph.tensors.get(name)
    params = t.dim_params if t is not None else None
    if not params or axis_from_end > len(params):
        return None
    return params[len(params) - axis_from_end]


def _assume_no_broadcast(ctx: RuleContext, i: int, axis: int, rank: int) -> None:
    """An operand's and the output's size on an axis are both symbolic (the batch is fixed to 1).

    They are taken as equal (no broadcast) only when shape inference proved it: both carry the same
    symbolic name. Anything else (a slice of length 1 of a symbolic axis, a strided conv's output)
    can differ, and broadcasting would repeat the operand: refused, naming the fix.
    """
    from_end = rank - axis
    a = _dim_param(ctx, ctx.node.inputs[i], from_end)
    b = _dim_param(ctx, ctx.node.outputs[0], from_end)
    if a is None or a != b:
        raise Refuse(
            f"cannot tell whether input '{ctx.node.inputs[i]}' is broadcast along a symbolic axis; " + SYMBOLIC_HINT
        )


def elementwise_copies(ctx: RuleContext, i: int) -> int:
    """How many outputs each element of input ``i`` reaches when all inputs broadcast together.

    Counted from the inputs' own shapes (constants have exact shapes), not from the output's: along
    an axis where another operand has size m > 1 and input ``i`` has 1, each element is copied m
    times. An input size that is unknown there is counted as 1 (the worst case). A shape that cannot
    be read is refused.
    """
    x = ctx.in_shape(i)
    others = [ctx.in_shape(j) for j in range(len(ctx.node.inputs)) if j != i and ctx.has_input(j)]
    if not others:
        return 1
    if any(o is None for o in others):
        raise Refuse(f"cannot tell how often input '{ctx.node.inputs[i]}' is broadcast (an operand's shape is unknown)")
    if x is None:
        if all(all(d == 1 for d in o) for o in others if o is not None):
            return 1
        raise Refuse(f"cannot tell how often input '{ctx.node.inputs[i]}' is broadcast (its shape is unknown)")
    rank = max(len(x), *(len(o) for o in others if o is not None))
    xs = _aligned(x, rank)
    aligned = [_aligned(o, rank) for o in others if o is not None]
    k = 1
    for ax in range(rank):
        dims = [o[ax] for o in aligned]
        dx = xs[ax]
        if any(d is None for d in dims):
            if dx is not None and dx != 1:
                continue  # the others must be dx or 1 there: no copies of x
            raise Refuse(
                f"cannot tell how often input '{ctx.node.inputs[i]}' is broadcast (symbolic dims); " + SYMBOLIC_HINT
            )
        m = max(dims) if dims else 1
        if m <= 1 or dx == m:
            continue
        if dx is None or dx == 1:
            k *= int(m)
        else:
            raise Refuse(f"input shapes {tuple(x)} and {tuple(dims)} do not broadcast together")
    return k


def broadcast_factor(ctx: RuleContext, i: int) -> int:
    """How many times each element of input ``i`` appears in the output under broadcasting.

    Uses the static shapes; an unknown dimension is accepted only where shape inference named the
    input's and the output's size the same symbol, otherwise the rule refuses.
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
    for ax, (din, dout) in enumerate(zip(a, out_shape, strict=True)):
        if din is None and dout is None:
            _assume_no_broadcast(ctx, i, ax, rank)
            continue
        if din == dout:
            continue
        if din is not None and din != 1 and dout is None:
            continue  # the output's size there is din: no copies
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
                _assume_no_broadcast(ctx, var_idx, ax, rank)
                continue
            else:
                raise Refuse("cannot tell how often the input is broadcast (symbolic dims)")
    return float(np.sqrt(sq.max() * k_extra)) if sq.size else 0.0
