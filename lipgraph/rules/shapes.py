"""Shape helpers shared by rules: broadcast multiplicities from static shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lipgraph.errors import Refuse

if TYPE_CHECKING:  # annotations only
    from lipgraph.rules.context import RuleContext


def _aligned(shape: tuple[int | None, ...], rank: int) -> tuple[int | None, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


# Ops whose inputs all broadcast together (numpy rules): a proof may look at the other operands' shapes.
_ELEMENTWISE = {"Add", "Sub", "Sum", "Mul", "Div", "Max", "Min", "Mean", "Pow", "PRelu", "Clip"}

SYMBOLIC_HINT = "fix the input size with --input-shape (certify uses its data's size)"


def _prove_no_copies(ctx: RuleContext, i: int, axis: int, rank: int) -> None:
    """Input ``i``'s and the output's size on an axis are both symbolic (the batch is fixed to 1).

    Input ``i`` is copied along that axis only if its size there is 1 while another operand's is
    larger. That is ruled out when every other operand has a known size 1 there (or no such axis):
    the output's size is then input ``i``'s own. Anything else (a residual join of two symbolic
    sizes, a slice of length 1 of a symbolic axis) can differ, so no equality is assumed: refused,
    naming the fix. (ONNX's symbolic dimension names are no proof: its inference can give a length-1
    slice the name of the axis it was cut from.)
    """
    from_end = rank - axis
    if ctx.node.op_type == "Expand":
        # The other "operand" is the target shape's value, not the shape input's own shape.
        target = ctx.const(1)
        others: list[tuple[int | None, ...] | None] = [None if target is None else tuple(int(d) for d in target)]
    elif ctx.node.op_type in _ELEMENTWISE:
        others = [ctx.graph.shape_of(n) for j, n in enumerate(ctx.node.inputs) if j != i and n]
    else:
        others = [None]  # operands that do not broadcast with input i (Gemm's A and B): no proof
    for shape in others:
        if shape is None:
            break
        if from_end > len(shape) or shape[len(shape) - from_end] == 1:
            continue
        break
    else:
        return
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
    out = ctx.out_shape(0)
    if k > 1 and out is not None and len(out) == rank:
        full = tuple(max(d for d in (xs[ax], *(o[ax] for o in aligned)) if d is not None) for ax in range(rank))
        if any(d is not None and d != f for d, f in zip(out, full, strict=True)):
            # ONNX's shape inference follows the op's specification (PRelu: the output has x's shape)
            # while ONNX Runtime broadcasts both ways: every shape after this node would be wrong.
            raise Refuse(
                f"the inputs broadcast to {full}, but ONNX shape inference gives {tuple(out)}; "
                "the shapes after this node cannot be trusted"
            )
    return k


def broadcast_factor(ctx: RuleContext, i: int) -> int:
    """How many times each element of input ``i`` appears in the output under broadcasting.

    Uses the static shapes; where the input's and the output's sizes are both unknown, only a proof
    that no other operand is larger there is accepted, otherwise the rule refuses.
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
            _prove_no_copies(ctx, i, ax, rank)
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

    The sum runs over the copies that broadcasting makes of each element of x. Rounded up: the scale is
    first divided by a power of two near its largest entry (exact), so no square overflows and a square
    that underflows loses less than 2^-1022, counted per entry; the float64 squares, sums, the copy count
    and the square root are covered by gamma_{n+3} (Higham 2002, ch. 3). Without the scaling a constant of
    1e-170 in a float64 model squared to 0 and gave the op a bound of 0.
    """
    scale = np.abs(np.asarray(scale, dtype=np.float64))
    if scale.size == 0:
        return 0.0
    top = float(scale.max())
    if not np.isfinite(top):
        return float("inf")
    if top == 0.0:
        return 0.0
    exponent = int(np.frexp(top)[1])
    scale = np.ldexp(scale, -exponent)  # largest entry in [0.5, 1)
    in_shape = ctx.in_shape(var_idx)
    out_shape = ctx.out_shape(0)
    if in_shape is None or out_shape is None:
        if scale.size == 1:
            return _rounded_up(float(scale.max()) ** 2 * broadcast_factor(ctx, var_idx), 1, exponent)
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
                _prove_no_copies(ctx, var_idx, ax, rank)
                continue
            else:
                raise Refuse("cannot tell how often the input is broadcast (symbolic dims)")
    return _rounded_up(float(sq.max()) * k_extra, scale.size, exponent)


def _rounded_up(sum_sq: float, terms: int, exponent: int) -> float:
    """``2^exponent sqrt(exact sum)`` from its float64 value ``sum_sq`` (at least 0.25: the largest scaled
    entry is >= 1/2) of ``terms`` squares: each underflow adds < 2^-1022, the float64 operations gamma_{terms+3}."""
    n = terms + 3
    gamma = n * 2.0**-53 / (1.0 - n * 2.0**-53)
    root = np.sqrt((sum_sq + terms * 2.0**-1022) * (1.0 + gamma))
    out = float(np.ldexp(np.nextafter(root * (1.0 + 2.0**-52), np.inf), exponent))
    # scaling back into the subnormal range rounds to the nearest subnormal: one step up covers it
    return float(np.nextafter(out, np.inf)) if out < 2.0**-1021 else out
