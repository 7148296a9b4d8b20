"""Selections with constant indices or masks: GatherND and Where with a constant condition.

Both copy elements of the variable input(s) into the output, each element some number of times, so
the operator norm is ``sqrt(max count)`` (a selection matrix: one 1 per row, ``count_i`` ones in
column ``i``, hence ``A^T A = diag(count)``). torch's dynamo exporter writes fancy indexing
(``x[:, [0, 2, 2]]``), ``interpolate(mode="nearest-exact")`` and the index arithmetic of adaptive
average pooling and 1-D linear interpolation with these two ops.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.rules.registry import Bound, RuleContext, rule
from lipgraph.rules.shapes import broadcast_factor

# Above this many output elements the Where counts fall back to the broadcast multiplicity.
_MAX_COUNT_ELEMENTS = 5_000_000


def gather_nd_max_count(indices: np.ndarray, data_shape: tuple[int | None, ...], batch_dims: int) -> int:
    """Largest number of times one slice of ``data`` is picked by GatherND's ``indices``.

    Index tuples are counted within each batch (the first ``batch_dims`` axes pair data and indices
    one to one). Negative indices count from the end of their axis, so they are normalised with the
    axis length; an unknown length with negative indices refuses (``-1`` and ``n - 1`` may coincide).
    """
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise Refuse("GatherND indices are not integers")
    idx = idx.astype(np.int64)
    if batch_dims < 0 or idx.ndim < 1 or idx.ndim <= batch_dims:
        raise Refuse(f"GatherND indices of rank {idx.ndim} with batch_dims={batch_dims}")
    k = idx.shape[-1]
    if k < 1 or batch_dims + k > len(data_shape):
        raise Refuse(f"GatherND index tuples of length {k} do not fit data of rank {len(data_shape)}")
    if idx.size == 0:
        return 0
    dims = data_shape[batch_dims : batch_dims + k]
    if np.any(idx < 0):
        if any(d is None for d in dims):
            raise Refuse("negative GatherND indices on an axis of unknown length")
        idx = np.where(idx < 0, idx + np.asarray(dims, dtype=np.int64), idx)
    batches = int(np.prod(idx.shape[:batch_dims], dtype=np.int64)) if batch_dims else 1
    tuples = idx.reshape(batches, -1, k)
    best = 0
    for b in range(batches):
        _, counts = np.unique(tuples[b], axis=0, return_counts=True)
        best = max(best, int(counts.max()))
    return best


@rule("GatherND", since=11)
def gather_nd(ctx: RuleContext) -> Bound:
    """GatherND with constant indices: ``sqrt(max count of one index tuple)`` (1 without repeats). Exact.

    Each output slice is a copy of one data slice; a slice picked c times contributes c copies of
    its change, so the norm is the square root of the largest count (counted per batch for
    ``batch_dims > 0``). Indices that depend on the input are discontinuous: refused. Source: the
    selection-matrix argument for Gather (Tsuzuku, Sato, Sugiyama 2018 use the same counting for
    overlapping pooling windows).
    """
    if ctx.is_variable(1):
        raise Refuse("GatherND indices that depend on the input are discontinuous")
    if not ctx.is_variable(0):
        raise Refuse("GatherND of a constant table by data is not supported")
    idx = ctx.const(1)
    if idx is None:
        raise Refuse("the GatherND indices have no known value")
    shape = ctx.in_shape(0)
    batch_dims = int(ctx.attr("batch_dims", 0))
    if shape is None:
        raise Refuse("GatherND needs the rank of its data input")
    count = gather_nd_max_count(idx, shape, batch_dims)
    lin = ctx.input_bounds[0]
    assert lin is not None
    factor = math.sqrt(count)
    how = "selection" if count <= 1 else f"selection, max repeat {count}"
    return Bound(factor * lin, how, factor=factor, lower=factor)


def _where_counts(ctx: RuleContext, cond: np.ndarray) -> list[int] | None:
    """How often each element of X (input 1) and Y (input 2) is chosen, exactly from the mask."""
    out = ctx.out_shape(0)
    shapes = [ctx.in_shape(i) for i in (1, 2)]
    if out is None or any(d is None for d in out) or any(s is None or any(d is None for d in s) for s in shapes):
        return None
    out_t = tuple(int(d) for d in out)
    if math.prod(out_t) > _MAX_COUNT_ELEMENTS:
        return None
    try:
        pick = np.broadcast_to(np.asarray(cond, dtype=bool), out_t)
        counts = []
        for j, s in enumerate(shapes):
            assert s is not None
            shp = tuple(int(d) for d in s)
            ids = np.broadcast_to(np.arange(math.prod(shp), dtype=np.int64).reshape(shp), out_t)
            chosen = ids[pick] if j == 0 else ids[~pick]
            counts.append(int(np.bincount(chosen.ravel()).max()) if chosen.size else 0)
    except ValueError:
        return None  # shapes that do not broadcast to the inferred output: use the generic count
    return counts


@rule("Where", since=9)
def where(ctx: RuleContext) -> Bound:
    """Where with a constant condition: ``sqrt(k_X L_X^2 + k_Y L_Y^2)`` over the variable branches.

    With the mask fixed, every output element is a copy of one element of X or of Y (or a constant),
    so ``||dy||^2 <= k_X ||dX||^2 + k_Y ||dY||^2`` with ``k`` the largest number of times one element
    is chosen (counted exactly from the mask and the broadcast when shapes are known, else the
    broadcast multiplicity). Exact for one variable branch. A condition that depends on the input
    switches between branches: discontinuous in general, refused.
    """
    if ctx.is_variable(0):
        raise Refuse("a Where condition that depends on the input switches branches (discontinuous)")
    cond = ctx.const(0)
    if cond is None:
        raise Refuse("the Where condition has no known value")
    var = [i for i in (1, 2) if ctx.is_variable(i)]
    if not var:
        raise Refuse("expected a branch that depends on the model input")
    counts = _where_counts(ctx, cond)
    total = 0.0
    ks = []
    for i in var:
        lin = ctx.input_bounds[i]
        assert lin is not None
        k = counts[i - 1] if counts is not None else broadcast_factor(ctx, i)
        ks.append(k)
        total += k * lin * lin
    value = math.sqrt(total)
    how = "masked selection" + (", counted from the mask" if counts is not None else ", broadcast count")
    if len(var) == 1:
        factor = math.sqrt(ks[0])
        return Bound(value, how, factor=factor)
    return Bound(value, how)
