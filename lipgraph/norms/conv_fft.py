"""The circulant (polyphase) bound of a zero-padded Conv: the kernel's symbol over the frequencies of a
safe circular grid (Sedghi, Gupta, Long 2019), on half the grid (a real kernel's symbols at w and -w are
complex conjugates, with the same singular values), each frequency's top singular value certified by
:mod:`lipgraph.norms.stack_sv`. A circular-conv pass may call :func:`conv_circulant_bound` and
:func:`circulant_grid` directly (also re-exported by :mod:`lipgraph.norms.conv`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lipgraph.norms import EPS64, NormBound
from lipgraph.norms.conv_geometry import (
    ConvGeometry,
    _check,
    _dilate,
    _grouped,
    _out_spatial,
    _per_axis,
    output_size,
)
from lipgraph.norms.conv_gram import (
    TWIDDLE_ULPS,
    drop_zero_lines,
    gram_kernel,
    gram_kernel_allowance,
    gram_kernel_cost,
    gram_kernel_fits,
    gram_symbols,
    tap_l1,
)
from lipgraph.norms.conv_tiers import tiered_fits, tiered_gram_bound
from lipgraph.norms.gram_kernel32 import kernel32_fits, kernel32_gram_bound
from lipgraph.norms.stack_sv import SVD_MAX_SIDE, certify_gram_stack, top_sv_stack

# Symbol arrays larger than this many complex entries are processed in frequency chunks.
_CHUNK_ENTRIES = 4_000_000


# --------------------------------------------------------------------------------------------
# Circulant / polyphase bound


def _phase_geometry(n: int, k: int, s: int, dl: int, pb: int, pe: int) -> tuple[int, int, int]:
    """Per axis: (Q, kernel length after space-to-depth; mlo; grid G) for the polyphase rewrite.

    With ``i + p_b = m s + r`` (phase r in [0, s)), the conv reads ``x_r[o + q]`` through the phase
    kernel ``P[(c, r), q] = W_dil[c, q s + r]``, ``q < Q = ceil(K / s)``, ``K`` the dilated span.
    The phase signals live on ``m in [mlo, mhi]``, ``mlo = floor(p_b / s)``, ``mhi = floor((n-1+p_b)/s)``;
    shifted to start at 0 the op is ``y[o] = sum_q P[q] x'[o + q - mlo]`` for ``o < out``.
    On a circular grid G this equals the circular correlation followed by restriction when
    (a) wrapped negative indices (>= -mlo) land in the zero region: G >= mhi + 1;
    (b) the largest index ``out + Q - 2 - mlo`` does not wrap: G >= out + Q - 1 - mlo;
    (c) distinct outputs stay distinct: G >= out; and (d) the kernel fits: G >= Q.
    """
    span = (k - 1) * dl + 1
    q = -(-span // s)
    out = output_size(n, k, s, dl, pb, pe)
    mlo = pb // s
    mhi = (n - 1 + pb) // s
    grid = max(mhi + 1, out + q - 1 - mlo, out, q, 1)
    return q, mlo, grid


def circulant_grid(geo: ConvGeometry, kernel_spatial: Sequence[int]) -> tuple[int, ...]:
    """The circular grid (in the space-to-depth domain) used by :func:`conv_circulant_bound`."""
    return tuple(
        _phase_geometry(n, k, s, dl, pb, pe)[2]
        for n, k, s, dl, pb, pe in zip(
            geo.in_spatial, kernel_spatial, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, strict=True
        )
    )


def phase_kernel(weight: np.ndarray, groups: int, strides: Sequence[int], dilations: Sequence[int]) -> np.ndarray:
    """Space-to-depth rewrite: (M, C/g, k...) -> (g, M/g, C/g * prod(s), Q...), an exact stride-1 kernel."""
    w = _check(weight, groups)
    d = w.ndim - 2
    undilated = all(int(dl) == 1 for dl in dilations)
    wd = _grouped(w, groups) if undilated else _dilate(_grouped(w, groups), dilations)  # (g, mg, cg, K...)
    if undilated and all(int(s) == 1 for s in strides):
        # Stride 1: the phase kernel is the grouped kernel itself (a fresh copy, as below; 1.4 ms instead of
        # 4.3 ms for a 512-channel 3 x 3 kernel: no zero fill, padding and transposition passes).
        return wd.copy()
    spans = wd.shape[-d:]
    qs = [-(-K // s) for K, s in zip(spans, strides, strict=True)]
    padded = np.zeros(wd.shape[:3] + tuple(q * s for q, s in zip(qs, strides, strict=True)))
    padded[(Ellipsis,) + tuple(slice(0, K) for K in spans)] = wd
    # Split each axis a = q*s + r into (q, r), then move the phases r next to the input channels.
    shape = list(padded.shape[:3])
    for q, s in zip(qs, strides, strict=True):
        shape += [q, s]
    p = padded.reshape(shape)
    q_axes = [3 + 2 * i for i in range(d)]
    r_axes = [4 + 2 * i for i in range(d)]
    p = p.transpose([0, 1, 2] + r_axes + q_axes)
    g, mg, cg = p.shape[:3]
    return p.reshape((g, mg, cg * math.prod(strides)) + tuple(qs))


def _half_frequencies(grid: Sequence[int]) -> np.ndarray:
    """One frequency index per pair {u, -u mod N} of the grid, as an (F, d) integer array.

    The kernel is real, so the symbol at -u is the complex conjugate of the symbol at u (same
    singular values): half the grid covers every frequency.
    """
    idx = np.indices(tuple(grid)).reshape(len(grid), -1).T  # (prod N, d)
    neg = (-idx) % np.asarray(grid)
    lin = np.ravel_multi_index(idx.T, tuple(grid))
    lin_neg = np.ravel_multi_index(neg.T, tuple(grid))
    return idx[lin <= lin_neg]


def _twiddles(freqs: np.ndarray, qshape: Sequence[int], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``2 pi sum_d u_d q_d / N_d`` for every (frequency u, tap q): two (F, T) arrays.

    Per axis the integer ``u_d q_d mod N_d`` is reduced exactly before the angle is formed, and the
    per-axis factors are multiplied as complex numbers, so each twiddle is within ``TWIDDLE_ULPS d`` ulps
    (the derivation of :func:`lipgraph.norms.conv_gram._offset_twiddles`: the same expression).
    """
    taps = np.indices(tuple(qshape)).reshape(len(qshape), -1)  # (d, T)
    tw = np.ones((freqs.shape[0], taps.shape[1]), dtype=np.complex128)
    for ax, n in enumerate(grid):
        k = np.outer(freqs[:, ax], taps[ax]) % n
        tw *= np.exp(-2j * np.pi * k / n)
    return tw.real.copy(), tw.imag.copy()


def _dft_allowance(pk: np.ndarray) -> float:
    """Additive bound on ``||K_hat(u) - fl(K_hat(u))||_2`` at every frequency u (direct DFT).

    Each symbol entry is a sum of T products of a weight and a twiddle, computed as two real dot
    products. A dot product of length T in any summation order errs by at most ``gamma_T`` times
    the sum of the absolute products (Higham, Accuracy and Stability, sec. 3.1); each twiddle is
    within ``TWIDDLE_ULPS d u`` of exact (d per-axis exponentials, d - 1 complex products). So every
    entry errs by at most ``(T + TWIDDLE_ULPS d + 4) u ||P_ij||_1`` per real part, and
    ``||E(u)||_2 <= ||E(u)||_F <= 2 (T + TWIDDLE_ULPS d + 4) u sqrt(sum_ij ||P_ij||_1^2)`` (factor 2 >= sqrt 2
    for the two parts plus slack). Typically ~1e-14 relative.
    """
    d = pk.ndim - 3
    t = math.prod(pk.shape[3:])
    l1 = tap_l1(pk)  # (g, mg, cp); its rounding (relative gamma_T) is inside the factor 2 >= sqrt 2
    per_group = np.sqrt((l1 * l1).sum(axis=(1, 2)))
    k = t + TWIDDLE_ULPS * d + 4
    coeff = 2.0 * k * EPS64 / (1.0 - k * EPS64)
    return float(coeff * float(per_group.max(initial=0.0)) * (1 + 4 * EPS64))


def _top_sv_stack(mats: np.ndarray) -> float:
    """Sound upper bound of max_f sigma_1(mats[f]) (exact arithmetic on the given float64 matrices).

    Batched SVD for small matrices, else a Cholesky certificate against a shared trial value with the
    exact eigensolve as fallback (:func:`lipgraph.norms.stack_sv.top_sv_stack`).
    """
    return top_sv_stack(mats)


def _gram_kernel_bound(pk: np.ndarray, freqs: np.ndarray, grid: Sequence[int]) -> float:
    """Sound bound of ``max_w sigma_1(P_hat(w))`` from the Gram matrices of :func:`conv_gram.gram_symbols`."""
    gk = gram_kernel(pk)
    err = gram_kernel_allowance(gk)
    sq = 0.0
    for gram in gram_symbols(gk, freqs, grid):
        sq = max(sq, certify_gram_stack(gram, err, floor=sq))
    return float(np.nextafter(math.sqrt(sq) * (1 + 2 * EPS64), np.inf))


def conv_circulant_bound(
    weight: np.ndarray,
    groups: int,
    strides: Sequence[int],
    dilations: Sequence[int],
    pads_begin: Sequence[int],
    pads_end: Sequence[int],
    in_spatial: Sequence[int],
    grid: Sequence[int] | None = None,
) -> NormBound:
    """Sound bound of a zero-padded Conv on a known input size: DFT of the polyphase kernel on a grid.

    The strided conv is rewritten space-to-depth as a stride-1 correlation with the kernel
    ``(M/g, C/g * prod(s), Q...)`` (exact), which is a restriction of a circular correlation on the
    grid of :func:`circulant_grid` (an isometric embedding, a circular op, a coordinate restriction),
    so its norm is at most ``max_w ||P_hat(w)||_2`` over the grid (Sedghi et al. 2019). The symbol is
    a direct DFT over the (few) taps, one BLAS product per chunk of frequencies, on half the grid
    (conjugate symmetry). Groups: the
    op is block diagonal, so the max over groups. Rounding: SVD/eig allowance plus an additive DFT
    allowance (:func:`_dft_allowance`). ``grid`` may override the grid for experiments; a grid below
    the safe one is refused, since it can undercount (docs/operators.md).
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    geo = ConvGeometry(
        tuple(int(v) for v in in_spatial),
        _per_axis(strides, d, 1, "strides"),
        _per_axis(dilations, d, 1, "dilations"),
        _per_axis(pads_begin, d, 0, "pads_begin"),
        _per_axis(pads_end, d, 0, "pads_end"),
    )
    safe = circulant_grid(geo, w.shape[2:])
    if grid is None:
        grid = safe
    elif any(gv < sv for gv, sv in zip(grid, safe, strict=True)):
        raise ValueError(f"grid {tuple(grid)} is below the safe grid {safe}")
    outs = _out_spatial(geo, w.shape[2:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    # Zero rows/columns dropped (exact): a 1x1 strided conv's phase kernel is mostly zeros.
    pk = drop_zero_lines(phase_kernel(w, groups, geo.strides, geo.dilations))  # (g, mg, cp, Q...)
    g, mg, cp = pk.shape[:3]
    path = ""
    if all(q == 1 for q in pk.shape[3:]):
        # A 1x1 phase kernel: the symbol is the same matrix at every frequency (no DFT needed).
        mats = pk.reshape(g, mg, cp)
        value = _top_sv_stack(mats.astype(np.float64))
        dft_err = 0.0
    else:
        freqs = _half_frequencies(grid)
        direct_cost, auto_cost = gram_kernel_cost(pk.shape, freqs.shape[0])
        use_kernel = auto_cost < direct_cost and gram_kernel_fits(pk.shape)
        if min(mg, cp) > SVD_MAX_SIDE and not use_kernel and tiered_fits(pk.shape, freqs.shape[0]):
            # float32 for the frequencies below the maximum, float64 at it (module conv_tiers).
            sq, _ = tiered_gram_bound(pk, freqs, grid)
            value = float(np.nextafter(math.sqrt(sq) * (1 + 2 * EPS64), np.inf))
            path = ", float32 tier"
            dft_err = _dft_allowance(pk)
        elif min(mg, cp) > SVD_MAX_SIDE and use_kernel:
            # Gram matrices from the kernel's autocorrelation: no per-frequency product (module conv_gram),
            # in float32 below the maximum where that is cheaper and in range (module gram_kernel32).
            tiered = kernel32_gram_bound(pk, freqs, grid) if kernel32_fits(pk.shape, freqs.shape[0]) else None
            if tiered is not None:
                value = float(np.nextafter(math.sqrt(tiered[0]) * (1 + 2 * EPS64), np.inf))
                path, dft_err = ", Gram kernel, float32 tier", _dft_allowance(pk)  # float64 symbols at the top
            else:
                value, path = _gram_kernel_bound(pk, freqs, grid), ", Gram kernel"
                dft_err = 0.0  # covered by the Gram kernel's own allowance
        else:
            value = 0.0
            qshape = pk.shape[3:]
            flat = pk.reshape(g * mg * cp, -1).T  # (T, g*mg*cp)
            chunk = max(1, _CHUNK_ENTRIES // max(1, g * mg * cp))
            for f0 in range(0, freqs.shape[0], chunk):
                cos, sin = _twiddles(freqs[f0 : f0 + chunk], qshape, grid)
                sym = (cos @ flat) + 1j * (sin @ flat)  # (F, g*mg*cp): the symbol at each frequency
                sym = np.swapaxes(sym.reshape(-1, g, mg, cp), 0, 1).reshape(-1, mg, cp)
                # The bound so far is tried first on the next chunk (no new trial value when it holds).
                value = max(value, top_sv_stack(sym, floor=value))
            dft_err = _dft_allowance(pk)
    value = float(np.nextafter(value + dft_err, np.inf))
    grid_txt = "x".join(str(v) for v in grid)
    s_txt = "" if all(s == 1 for s in geo.strides) else f", polyphase s={'x'.join(map(str, geo.strides))}"
    return NormBound(value, f"circulant symbol N={grid_txt}{s_txt}{path}", None)


def circular_norm_same_grid(weight: np.ndarray, in_spatial: Sequence[int]) -> float:
    """NOT A BOUND. The circular norm on the input's own grid (N = n), stride 1, one group.

    Kept only for the negative control of docs/operators.md: for zero padding it can be below the true
    norm (kernel [1, -1], n = 3, pad 1: 1.732 < 1.848). Nothing in lipgraph uses it as a bound.
    """
    w = np.asarray(weight, dtype=np.float64)
    d = w.ndim - 2
    sym = np.fft.fftn(w, s=tuple(in_spatial), axes=tuple(range(2, 2 + d)))
    mats = np.moveaxis(sym.reshape(sym.shape[:2] + (-1,)), 2, 0)
    return float(np.linalg.svd(mats, compute_uv=False)[:, 0].max())
