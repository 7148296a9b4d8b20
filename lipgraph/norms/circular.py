"""Exact operator norm of a circular (periodic) convolution on a known grid.

A Conv applied to an input wrap-padded by exactly the kernel's reach (``pad_begin + pad_end`` equal to
the dilated span minus one on every spatial axis, no zero padding) is a circular correlation on the
input's own ``n_1 x ... x n_d`` grid, up to a cyclic shift of the input (a permutation, norm 1). The
DFT block-diagonalises it, so its norm is exactly ``max over the grid frequencies w of ||K_hat(w)||_2``
(Sedghi, Gupta, Long 2019). With stride ``s`` dividing ``n``, the space-to-depth (polyphase) rewrite
turns it exactly into a stride-1 circular correlation on the ``n/s`` grid with ``C s^d`` input channels.
Groups: block diagonal, so the max over groups.

Unlike a zero-padded conv, here the circulant norm on the input's own grid is the exact norm, not an
under-estimate: the wrap padding is what makes the op circulant. The symbol is computed with the same
direct DFT and rounding allowances as :func:`lipgraph.norms.conv.conv_circulant_bound`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lipgraph.norms import NormBound
from lipgraph.norms.conv import (
    _CHUNK_ENTRIES,
    _MAX_CIRCULANT_POINTS,
    _dft_allowance,
    _half_frequencies,
    _top_sv_stack,
    _twiddles,
    phase_kernel,
)


def circular_conv_norm(
    weight: np.ndarray, groups: int, strides: Sequence[int], dilations: Sequence[int], in_spatial: Sequence[int]
) -> NormBound:
    """Sound upper bound (exact up to rounding) of a circular conv's norm on the grid ``in_spatial``.

    Raises ValueError when a stride does not divide its axis (then the op is not circulant in the
    polyphase domain) or the grid is too large to visit.
    """
    w = np.asarray(weight, dtype=np.float64)
    d = w.ndim - 2
    if len(in_spatial) != d or len(strides) != d or len(dilations) != d:
        raise ValueError("strides, dilations and the input size need one entry per spatial axis")
    if any(int(n) % int(s) for n, s in zip(in_spatial, strides, strict=True)):
        raise ValueError(f"strides {list(strides)} do not divide the input size {list(in_spatial)}")
    grid = tuple(int(n) // int(s) for n, s in zip(in_spatial, strides, strict=True))
    if math.prod(grid) > _MAX_CIRCULANT_POINTS:
        raise ValueError(f"grid {grid} is too large for the circular norm")
    pk = phase_kernel(w, groups, strides, dilations)  # (g, mg, cp, Q...)
    g, mg, cp = pk.shape[:3]
    if all(q == 1 for q in pk.shape[3:]):
        value = _top_sv_stack(pk.reshape(g, mg, cp))  # the same symbol at every frequency
        lower = float(np.linalg.svd(pk.reshape(g, mg, cp), compute_uv=False)[:, 0].max())
        return NormBound(value, "circular conv, 1x1 symbol (exact)", lower)
    value, lower = 0.0, 0.0
    freqs = _half_frequencies(grid)
    flat = pk.reshape(g * mg * cp, -1).T  # (taps, g*mg*cp)
    chunk = max(1, _CHUNK_ENTRIES // max(1, g * mg * cp))
    for f0 in range(0, freqs.shape[0], chunk):
        cos, sin = _twiddles(freqs[f0 : f0 + chunk], pk.shape[3:], grid)
        sym = (cos @ flat) + 1j * (sin @ flat)
        sym = np.swapaxes(sym.reshape(-1, g, mg, cp), 0, 1).reshape(-1, mg, cp)
        value = max(value, _top_sv_stack(sym))
        lower = max(lower, float(np.linalg.svd(sym, compute_uv=False)[:, 0].max()))
    value = float(np.nextafter(value + _dft_allowance(pk), np.inf))
    grid_txt = "x".join(str(v) for v in grid)
    s_txt = "" if all(int(s) == 1 for s in strides) else f", polyphase s={'x'.join(map(str, strides))}"
    return NormBound(value, f"circular conv symbol on its own grid N={grid_txt} (exact){s_txt}", lower)
