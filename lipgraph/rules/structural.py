"""Shape and indexing ops: norm 1, or ``sqrt(max multiplicity)`` when elements are duplicated (docs/operators.md)."""

from __future__ import annotations

import math

import numpy as np
import onnx

from lipgraph.errors import Refuse
from lipgraph.graph import FLOAT_TYPES
from lipgraph.rules.registry import Bound, RuleContext, rule
from lipgraph.rules.shapes import broadcast_factor


def _identity_like(ctx: RuleContext, method: str) -> Bound:
    _, lin = ctx.single_variable_input()
    return Bound(lin, method, factor=1.0)


@rule("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "DepthToSpace", "SpaceToDepth")
def permutation(ctx: RuleContext) -> Bound:
    """Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity, DepthToSpace, SpaceToDepth: 1.

    Each output element is one input element and each input element appears once: an isometry.
    Exact. Source: docs/operators.md ("Structure").
    """
    if ctx.node.op_type == "Reshape" and ctx.is_variable(1):
        raise Refuse("a Reshape target shape that depends on the input values")
    return _identity_like(ctx, "permutation of elements")


@rule("Dropout")
def dropout(ctx: RuleContext) -> Bound:
    """Dropout at inference: the identity (1). In training mode it is random: refused. docs/operators.md."""
    mode = ctx.const(2)
    if ctx.is_variable(2) or (mode is not None and bool(np.any(mode))):
        raise Refuse("Dropout in training mode is random; export the model in eval mode")
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1]:
        return Bound([ctx.single_variable_input()[1], 0.0], "identity at inference", factor=1.0)
    return _identity_like(ctx, "identity at inference")


@rule("Cast", "CastLike")
def cast(ctx: RuleContext) -> Bound:
    """Cast between float types: 1 (real-arithmetic semantics). A cast of data to integers or booleans
    is discontinuous: refused. docs/operators.md.
    """
    to = ctx.attr("to")
    if ctx.node.op_type == "CastLike":
        t = ctx.graph.tensors.get(ctx.node.inputs[1])
        to = t.elem_type if t is not None else None
        if to is None and t is not None and t.value is not None:
            to = onnx.helper.np_dtype_to_tensor_dtype(t.value.dtype)
    if to not in FLOAT_TYPES:
        raise Refuse("casting data to a non-float type is discontinuous")
    _, lin = ctx.single_variable_input()
    return Bound(lin, "float cast", factor=1.0)


@rule("Slice")
def slice_(ctx: RuleContext) -> Bound:
    """Slice: 1 (a restriction: each output element is a distinct input element). Exact. docs/operators.md."""
    for j in range(1, len(ctx.node.inputs)):
        if ctx.is_variable(j):
            raise Refuse("Slice bounds that depend on the input values")
    return _identity_like(ctx, "restriction")


@rule("Split")
def split(ctx: RuleContext) -> Bound:
    """Split: each output is a restriction of the input, so each has ``L <= L_u``. docs/composition.md."""
    _, lin = ctx.single_variable_input()
    return Bound(lin, "restriction per output", factor=1.0)


@rule("Gather")
def gather(ctx: RuleContext) -> Bound:
    """Gather with constant indices: ``sqrt(max count of one index)`` (1 when no index repeats). Exact.

    Negative indices are normalised with the static axis length when known. Indices that depend on
    the data are discontinuous and refused. Source: docs/operators.md.
    """
    if ctx.is_variable(1):
        raise Refuse("Gather indices that depend on the input are discontinuous")
    if not ctx.is_variable(0):
        raise Refuse("Gather of a constant table by data is not supported")
    idx = ctx.const(1)
    if idx is None:
        raise Refuse("the Gather indices have no known value")
    idx = np.asarray(idx).astype(np.int64).ravel()
    shape = ctx.in_shape(0)
    axis = int(ctx.attr("axis", 0))
    n = None
    if shape is not None:
        axis = axis % len(shape)
        n = shape[axis]
    if n is not None:
        idx = np.where(idx < 0, idx + n, idx)
    elif np.any(idx < 0) and np.any(idx >= 0):
        raise Refuse("negative and positive Gather indices on an axis of unknown length")
    count = int(np.bincount(idx - idx.min()).max()) if idx.size else 0
    lin = ctx.input_bounds[0]
    assert lin is not None
    factor = math.sqrt(count)
    return Bound(factor * lin, "selection" if count <= 1 else f"selection, max repeat {count}", factor=factor)


_MAX_PAD_COUNT = 10_000_000


def _pad_counts(n: int, before: int, after: int, mode: str) -> int:
    """Largest number of times one input element appears along an axis after padding.

    Negative pads crop. Runtimes differ on the order: onnxruntime crops first and pads the cropped
    axis (so ``wrap`` repeats only the kept elements), a pad-then-crop reading repeats others. Both
    are counted and the larger is used, so the bound holds for either.
    """
    if n <= 0:
        return 1
    np_mode = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(mode)
    if np_mode is None:
        raise Refuse(f"unknown Pad mode '{mode}' (ONNX defines constant, reflect, edge and wrap)")
    b, a = max(before, 0), max(after, 0)
    if n + b + a > _MAX_PAD_COUNT:
        # The repeats are counted on the padded axis itself; a declared pad of 4e9 would allocate it.
        raise Refuse(f"{mode} padding of {before}/{after} elements on an axis of {n} is too large to count")
    lo, hi = max(-before, 0), max(-after, 0)

    def counts(src: np.ndarray, crop_after: bool) -> int:
        if src.size == 0:
            return 0
        m = "edge" if np_mode == "reflect" and src.size == 1 else np_mode
        padded = np.pad(src, (b, a), mode=m)
        if crop_after:
            padded = padded[lo:len(padded) - hi]
        return int(np.bincount(padded, minlength=n).max()) if padded.size else 0

    pad_then_crop = counts(np.arange(n), crop_after=True)
    crop_then_pad = counts(np.arange(n)[lo:n - hi], crop_after=False)
    return max(pad_then_crop, crop_then_pad)


@rule("Pad")
def pad(ctx: RuleContext) -> Bound:
    """Pad: 1 in constant mode (zeros or a constant added outside); in reflect / edge / wrap modes,
    ``sqrt(prod over axes of the max repeats of one element)``, counted exactly per axis. docs/operators.md.
    """
    mode = ctx.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if ctx.opset >= 11:
        pads = ctx.const(1)
        if ctx.is_variable(1) or ctx.is_variable(2):
            raise Refuse("Pad amounts or value that depend on the input")
    else:
        # Opsets 2-10 give the amounts as the attribute ``pads``, opset 1 as ``paddings``.
        attr = ctx.attr("pads", ctx.attr("paddings"))
        if attr is None:
            raise Refuse("Pad without its 'pads' attribute (opset < 11)")
        pads = np.array(attr, dtype=np.int64)
    _, lin = ctx.single_variable_input()
    if mode == "constant":
        return Bound(lin, "zero/constant padding", factor=1.0)
    shape = ctx.in_shape(0)
    if pads is None or shape is None:
        raise Refuse(f"{mode} padding with unknown pads or input shape")
    pads = np.asarray(pads, dtype=np.int64).ravel()
    rank = len(shape)
    axes = list(range(rank))
    if ctx.opset >= 18 and ctx.has_input(3):
        ax = ctx.const(3)
        if ax is None:
            raise Refuse("Pad axes have no known value")
        axes = [int(a) % rank for a in np.ravel(ax)]
    half = len(pads) // 2
    if len(pads) != 2 * len(axes):
        raise Refuse(f"Pad has {len(pads)} pad amounts for {len(axes)} axes (ONNX needs two per axis)")
    total = 1
    for j, ax in enumerate(axes[:half]):
        n = shape[ax]
        if n is None:
            raise Refuse(f"{mode} padding on an axis of unknown length")
        total *= _pad_counts(int(n), int(pads[j]), int(pads[j + half]), mode)
    factor = math.sqrt(total)
    return Bound(factor * lin, f"{mode} padding, max repeat {total}", factor=factor)


@rule("Expand")
def expand(ctx: RuleContext) -> Bound:
    """Expand: each element appears k times, so ``sqrt(k)`` (exact). docs/composition.md (broadcasting)."""
    _, lin = ctx.single_variable_input()
    k = broadcast_factor(ctx, 0)
    return Bound(math.sqrt(k) * lin, f"broadcast x{k}", factor=math.sqrt(k))


@rule("Tile")
def tile(ctx: RuleContext) -> Bound:
    """Tile: each element appears ``prod(repeats)`` times: ``sqrt(prod(repeats))`` (exact). docs/composition.md."""
    if ctx.is_variable(1):
        raise Refuse("Tile repeats that depend on the input")
    reps = ctx.const(1) if ctx.has_input(1) else np.array(ctx.attr("repeats", []))
    if reps is None:
        raise Refuse("Tile repeats have no known value")
    k = int(np.prod(np.asarray(reps, dtype=np.int64)))
    _, lin = ctx.single_variable_input()
    return Bound(math.sqrt(k) * lin, f"tile x{k}", factor=math.sqrt(k))


@rule("TopK")
def topk(ctx: RuleContext) -> Bound:
    """TopK values: 1 (the top k of a sorted vector; sorting is 1-Lipschitz, Anil et al. 2019).

    The indices output is an integer tensor; any use of it on the data path is refused where it is
    used. Source: docs/operators.md (GroupSort),
    """
    if ctx.is_variable(1):
        raise Refuse("TopK k that depends on the input values")
    if int(ctx.attr("sorted", 1)) == 0:
        # ONNX leaves the order of unsorted values undefined; an order that follows the indices
        # jumps when two values swap ranks, so no Lipschitz constant holds for every runtime.
        raise Refuse("TopK with sorted=0 returns its values in an undefined order (possibly discontinuous)")
    _, lin = ctx.single_variable_input()
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1] and (
        ctx.graph.consumers(ctx.node.outputs[1]) or ctx.graph.is_graph_output(ctx.node.outputs[1])
    ):
        # Checked here, not only by the indices' type: a file may declare them FLOAT.
        raise Refuse("TopK indices used on the data path are discontinuous in the input")
    return Bound([lin] * len(ctx.node.outputs), "sorting values", factor=1.0)
