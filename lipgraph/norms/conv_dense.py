"""The Conv operator itself on a known input: apply, adjoint, dense matrix, exact SVD bound and the
power-iteration lower estimate (the "exact where cheap" path of the conv bounds)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import numpy as np

from lipgraph.norms import NormBound
from lipgraph.norms.conv_geometry import ConvGeometry, _check, _grouped, _out_spatial
from lipgraph.norms.dense import spectral_norm

# --------------------------------------------------------------------------------------------
# The operator itself (used for the dense matrix and for the power-iteration lower estimate)


def _windows(geo: ConvGeometry, ks: Sequence[int], outs: Sequence[int]):
    """For every tap: the strided window of the padded input that the tap reads."""
    for tap in product(*(range(k) for k in ks)):
        win = tuple(
            slice(j * dl, j * dl + (o - 1) * s + 1, s)
            for j, dl, o, s in zip(tap, geo.dilations, outs, geo.strides, strict=True)
        )
        yield tap, win


def _conv_apply(wg: np.ndarray, geo: ConvGeometry, x: np.ndarray) -> np.ndarray:
    """Apply the grouped zero-padded conv: x (g, C/g, B, n...) -> y (g, M/g, B, out...)."""
    d = len(geo.in_spatial)
    ks = wg.shape[-d:]
    outs = _out_spatial(geo, ks)
    padded = [n + pb + pe for n, pb, pe in zip(geo.in_spatial, geo.pads_begin, geo.pads_end, strict=True)]
    g, cg, b = x.shape[:3]
    xp = np.zeros((g, cg, b) + tuple(padded), dtype=np.float64)
    xp[(Ellipsis,) + tuple(slice(pb, pb + n) for pb, n in zip(geo.pads_begin, geo.in_spatial, strict=True))] = x
    y = np.zeros((g, wg.shape[1], b * math.prod(outs)), dtype=np.float64)
    for tap, win in _windows(geo, ks, outs):
        # (g, M/g, C/g) @ (g, C/g, B*out) -> (g, M/g, B*out)
        y += wg[(Ellipsis,) + tap] @ xp[(Ellipsis,) + win].reshape(g, cg, -1)
    return y.reshape((g, wg.shape[1], b) + tuple(outs))


def _conv_adjoint(wg: np.ndarray, geo: ConvGeometry, y: np.ndarray) -> np.ndarray:
    """The adjoint of :func:`_conv_apply`: y (g, M/g, B, out...) -> x (g, C/g, B, n...)."""
    d = len(geo.in_spatial)
    ks = wg.shape[-d:]
    outs = y.shape[3:]
    g, mg, b = y.shape[:3]
    padded = [n + pb + pe for n, pb, pe in zip(geo.in_spatial, geo.pads_begin, geo.pads_end, strict=True)]
    xp = np.zeros((g, wg.shape[2], b) + tuple(padded), dtype=np.float64)
    flat = y.reshape(g, mg, -1)
    for tap, win in _windows(geo, ks, outs):
        contrib = np.swapaxes(wg[(Ellipsis,) + tap], 1, 2) @ flat
        xp[(Ellipsis,) + win] += contrib.reshape((g, wg.shape[2], b) + tuple(outs))
    return xp[(Ellipsis,) + tuple(slice(pb, pb + n) for pb, n in zip(geo.pads_begin, geo.in_spatial, strict=True))]


def conv_power_lower(weight: np.ndarray, groups: int, geo: ConvGeometry, steps: int = 12, seed: int = 0) -> float:
    """A LOWER estimate of the conv's norm (power iteration on the real operator); never a bound."""
    wg = _grouped(_check(weight, groups), groups)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, wg.shape[2], 1) + tuple(geo.in_spatial))
    est = 0.0
    for _ in range(steps):
        nx = float(np.linalg.norm(x))
        if nx == 0.0 or not np.isfinite(nx):
            return 0.0
        x /= nx
        y = _conv_apply(wg, geo, x)
        est = float(np.linalg.norm(y))
        x = _conv_adjoint(wg, geo, y)
    return est


def conv_dense_matrix(wg_one: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    """Dense matrix of one group's conv, (M/g * prod(out)) x (C/g * prod(n)), exact copies of weights."""
    c = wg_one.shape[1]
    n_in = c * math.prod(geo.in_spatial)
    # Basis vector b is column b: x (1, C, B, n...) with x[0, c, b, pos] = 1 for b = (c, pos).
    basis = np.eye(n_in, dtype=np.float64).reshape((n_in, c) + tuple(geo.in_spatial))
    y = _conv_apply(wg_one[None], geo, np.swapaxes(basis, 0, 1)[None])  # (1, M/g, B, out...)
    return np.swapaxes(y[0], 0, 1).reshape(n_in, -1).T


def dense_cost(weight_shape: Sequence[int], groups: int, geo: ConvGeometry) -> float:
    """Rough flop count of the dense exact path (matrix build plus SVD, all groups)."""
    d = len(geo.in_spatial)
    ks = weight_shape[-d:]
    outs = _out_spatial(geo, ks)
    rows = weight_shape[0] // groups * math.prod(outs)
    cols = weight_shape[1] * math.prod(geo.in_spatial)
    return float(groups) * rows * cols * (min(rows, cols) + math.prod(ks))


def conv_dense_bound(weight: np.ndarray, groups: int, geo: ConvGeometry) -> NormBound:
    """Exact norm of the conv on a known input (SVD of its dense matrix per group, max over groups).

    The matrix entries are copies of the weights (each (output, input) pair meets at most one tap),
    so the only rounding is the SVD's, covered by :func:`lipgraph.norms.inflate`.
    """
    w = _check(weight, groups)
    wg = _grouped(w, groups)
    d = len(geo.in_spatial)
    outs = _out_spatial(geo, w.shape[-d:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    best, lower = 0.0, 0.0
    for g in range(groups):
        nb = spectral_norm(conv_dense_matrix(wg[g], geo))
        best = max(best, nb.value)
        lower = max(lower, nb.lower if nb.lower is not None else 0.0)
    size = "x".join(str(n) for n in geo.in_spatial)
    return NormBound(best, f"exact dense SVD (input {size})", lower)
