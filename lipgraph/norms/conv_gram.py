"""Gram matrices of a conv's symbols at many frequencies, from the kernel's autocorrelation.

The symbol of a stride-1 (phase) kernel ``P`` with taps ``q`` is ``A(w) = sum_q P_q e^{-i <w, q>}``, so its
Gram matrix is ``A(w) A(w)^H = sum_delta R_delta e^{-i <w, delta>}`` with the autocorrelation
``R_delta = sum_{q - q' = delta} P_q P_q'^T`` (real, one matrix per tap offset). All ``R_delta`` come from one
symmetric product of the taps stacked on top of each other (``(T m)^2 n`` flops for T taps), after which
every frequency costs a small DFT over the ``(2Q - 1)^d`` offsets (``4 D m^2`` flops) instead of a Gram
product (``4 m^2 n``) and the forming of its symbol. On the smaller side only (``A^H A`` when the kernel
has fewer input than output channels: the same construction on the transposed taps gives the complex
conjugate of ``A^H A``, whose eigenvalues are the same). This is the Gram matrix of Sedghi et al. (2019)'s
per-frequency blocks, computed as the DFT of the kernel's autocorrelation.

Rounding (Higham 2002, sec. 3.1 and 3.5, any summation order). Write ``S = sum_q |P_q|`` (entrywise).
``fl(R_delta)`` sums at most T products of inner length n: its entries err by at most
``gamma_{n+T} sum_{q-q'=delta} (|P_q| |P_q'|^T)_ij``. Each real part of ``fl(G(w))`` is a dot product of
length D of those (or, pairing ``delta`` with ``-delta``, of ``(D + 1) / 2`` sums of two: :func:`gram_symbols`) with
twiddles that are within ``TWIDDLE_ULPS d u`` of exact (:func:`_offset_twiddles`; the
symbol's own DFT uses the same twiddles), so per real part the entry errs by at most ``c (S S^T)_ij`` with
``c = gamma_{D + n + T + TWIDDLE_ULPS d + 8}``, since ``sum_delta sum_{q-q'=delta} |P_q| |P_q'|^T = S S^T``. The complex
entry errs by ``sqrt(2) c (S S^T)_ij`` and ``||E||_2 <= sqrt(2) c ||S||_F^2``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from lipgraph.norms import EPS64

# Largest stacked-tap matrix (T m) x (T m) built at once (entries, float64): 512 MiB.
_MAX_STACK_ENTRIES = 2**26
# Smaller side of the taps from which the autocorrelation is formed block by block (:func:`_block_products`);
# below it one symmetric product of the stacked taps is faster (a 64-channel 3 x 3 kernel: 45 small blocks).
_BLOCK_MIN_SIDE = 256
# Complex entries of Gram matrices produced per chunk of frequencies (4 MiB: a chunk stays in cache from its
# DFT through its factorisations; the bound so far is the next chunk's first trial value, so small chunks
# cost few extra Lanczos runs). Measured 25% less CPU than 64 MiB chunks on the 64- to 512-channel layers
# of a CIFAR ResNet-18.
_GRAM_CHUNK_ENTRIES = 2**18
# Relative speeds measured on one thread (OpenBLAS, AVX2): a symmetric rank-k product (syrk) runs at
# about 0.6x the flop rate of a general one; used only to choose the cheaper of two sound paths.
_SYRK_SLOWDOWN = 1.6
# Error of the twiddles of :func:`_offset_twiddles` (and of conv_fft's symbol twiddles), in units of 2^-53 per
# grid axis (derivation in its docstring; measured at most 14.4 on one axis and 28.5 on two, against mpmath).
TWIDDLE_ULPS = 32


@dataclass(frozen=True)
class GramKernel:
    """Autocorrelation of a phase kernel on its smaller side: ``R[g, k]`` is ``R_delta`` for ``deltas[k]``."""

    r: np.ndarray  # (groups, D, m, m) float64
    deltas: np.ndarray  # (D, d) int, each axis in [-(Q-1), Q-1]
    s_fro2: float  # upper bound of max over groups of ||sum_q |P_q| ||_F^2
    inner: int  # n, the inner length of every product
    taps: int  # T


def tap_l1(pk: np.ndarray) -> np.ndarray:
    """``sum_q |P_q|`` (g, mg, cp) of a phase kernel ``(g, mg, cp, Q...)``, as computed (float64, T terms per
    entry summed in some order: relative error at most ``gamma_{T-1}``, which the callers' margins cover).

    One matrix-vector product with a ones vector: numpy's reduction over the few trailing tap entries of
    every weight runs 2-4x slower (6-9 ms against 2-3 ms on a 512-channel 3 x 3 kernel, one thread)."""
    g, mg, cp = pk.shape[:3]
    t = math.prod(pk.shape[3:])
    return (np.abs(pk).reshape(g * mg * cp, t) @ np.ones(t)).reshape(g, mg, cp)


def drop_zero_lines(pk: np.ndarray) -> np.ndarray:
    """Remove output rows and input columns that are zero at every tap in every group (exact: zero rows
    and columns do not change the singular values). A 1x1 strided conv's phase kernel is 3/4 zeros."""
    g, mg, cp = pk.shape[:3]
    nz = pk.reshape(g, mg, cp, -1) != 0
    # Leading-axis reductions first (contiguous, elementwise), the short trailing ones last: 3-6 ms less
    # than one reduction over axes (0, 1, 3) on a 512-channel kernel.
    rows = nz.reshape(g, mg, -1).any(axis=2).any(axis=0)
    cols = nz.any(axis=(0, 1)).any(axis=1)
    if rows.all() and cols.all():
        return pk
    if not rows.any() or not cols.any():
        return pk[:, :1, :1] * 0.0  # the zero operator: one zero entry keeps the shapes valid
    return pk[:, rows][:, :, cols]


def gram_kernel_cost(pk_shape: Sequence[int], n_freq: int) -> tuple[float, float]:
    """Rough cost (flop-equivalents) of (the direct Gram path, the autocorrelation path) for one phase kernel."""
    g, mg, cp = pk_shape[:3]
    qs = pk_shape[3:]
    m, n = min(mg, cp), max(mg, cp)
    t = math.prod(qs)
    d_off = math.prod(2 * q - 1 for q in qs)
    # Direct: forming the symbol (2 real products over T taps) plus a syrk of inner 2n and one m x m product.
    direct = g * n_freq * (4.0 * t * m * n + _SYRK_SLOWDOWN * 2.0 * m * m * n + 2.0 * m * m * n)
    auto = g * (_SYRK_SLOWDOWN * (t * m) ** 2 * n + 4.0 * d_off * n_freq * m * m + 2.0 * n_freq * m * m)
    return direct, auto


def gram_kernel_fits(pk_shape: Sequence[int]) -> bool:
    mg, cp = pk_shape[1:3]
    return (math.prod(pk_shape[3:]) * min(mg, cp)) ** 2 <= _MAX_STACK_ENTRIES


def gram_kernel(pk: np.ndarray) -> GramKernel:
    """``R_delta`` for every offset, per group, on the smaller side of the phase kernel ``(g, mg, cp, Q...)``."""
    g, mg, cp = pk.shape[:3]
    qs = tuple(pk.shape[3:])
    d = len(qs)
    taps = np.indices(qs).reshape(d, -1).T  # (T, d)
    t = taps.shape[0]
    # X_q: (m, n) with m the smaller side; for A^H A use P_q^T (see the module docstring).
    x = pk.reshape(g, mg, cp, t)
    x = np.moveaxis(x, 3, 1)  # (g, T, mg, cp)
    if cp < mg:
        x = np.swapaxes(x, 2, 3)  # (g, T, cp, mg)
    m, n = x.shape[2], x.shape[3]
    span = tuple(2 * q - 1 for q in qs)
    deltas = np.indices(span).reshape(d, -1).T - (np.asarray(qs) - 1)  # (D, d)
    # Position of each delta in the flattened offset grid.
    index = {tuple(int(v) for v in dl): k for k, dl in enumerate(deltas)}
    r = np.zeros((g, deltas.shape[0], m, m))
    s_fro2 = 0.0
    l1 = tap_l1(pk)
    parts = _support_parts(x) if m >= _BLOCK_MIN_SIDE else None
    for gi in range(g):
        if parts is not None:
            _block_products(x[gi], parts, taps, index, r[gi])
        else:
            stack = np.ascontiguousarray(x[gi].reshape(t * m, n))
            z = stack @ stack.T  # syrk: every block (q, q') is X_q X_q'^T
            for a in range(t):
                for b in range(t):
                    k = index[tuple(int(v) for v in taps[a] - taps[b])]
                    r[gi, k] += z[a * m : (a + 1) * m, b * m : (b + 1) * m]
        s = l1[gi]  # S = sum_q |P_q| (or its transpose: the same sum of squares)
        s_fro2 = max(s_fro2, float((s * s).sum()))
    s_fro2 *= 1.0 + (m * n + t + 2) * EPS64 / (1.0 - (m * n + t + 2) * EPS64)
    return GramKernel(r, deltas, float(np.nextafter(s_fro2, np.inf)), n, t)


def _support_parts(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The columns of the stacked taps ``x`` (g, T, m, n) grouped by their support: [(taps, columns)], the
    columns of each group nonzero at those taps only (in every group and row); ``columns`` None: all of them.

    After space-to-depth, a strided conv's input column of phase ``r`` is nonzero only at the taps ``q`` with
    ``q s + r`` inside the kernel (a 3 x 3, stride-2 kernel: taps 4, 2, 2 and 1 for its four phases), so
    the products over the other columns add exact zeros and are skipped: 25 of the 64 block products.

    Rounding: an entry of ``R_delta`` then sums the same nonzero terms; a term meets one product, ``c - 1``
    additions of its group's inner sum (``c`` columns) and at most ``P`` additions accumulating the partial
    products (``P`` the sum of the groups' tap counts), so ``c + P <= n + T`` keeps it inside the
    ``gamma_{n+T}`` of :func:`gram_kernel_allowance`. Where that fails, or where every column has every tap,
    one group of all columns is returned."""
    t, n = x.shape[1], x.shape[3]
    full: list[tuple[np.ndarray, np.ndarray | None]] = [(np.arange(t), None)]
    supp = (x != 0).any(axis=(0, 2))  # (T, n): the taps where each column can be nonzero
    patterns, inverse = np.unique(supp.T, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    for k, pat in enumerate(patterns):
        tp = np.flatnonzero(pat)
        if tp.size:  # a column zero at every tap adds nothing
            parts.append((tp, np.flatnonzero(inverse == k)))
    if not parts or (len(parts) == 1 and parts[0][0].size == t):
        return full
    depth = max(c.size for _, c in parts if c is not None) + sum(tp.size for tp, _ in parts)
    return parts if depth <= n + t else full


def _block_products(
    xg: np.ndarray,
    parts: list[tuple[np.ndarray, np.ndarray | None]],
    taps: np.ndarray,
    index: dict[tuple[int, ...], int],
    rg: np.ndarray,
) -> None:
    """Accumulate ``R_delta = sum_{q - q' = delta} X_q X_q'^T`` of one group (``xg``: (T, m, n)) into ``rg``
    (D, m, m; zero on entry), one block product per pair of taps and column support (:func:`_support_parts`).

    For wide kernels (m >= 256): numpy's symmetric product of the whole stacked-tap matrix copies its
    (T m)^2 triangle afterwards and runs at half the rate of the block products on a 2048 x 256 stack (42 ms
    against 2 x 1.4 + 2 x 6 ms for a 512-channel stride-2 kernel's four column supports). The taps are in
    lexicographic order, so for ``a < b`` the offset ``q_a - q_b`` is negative: the products ``X_a X_b^T``
    land on the negative offsets and ``X_a X_a^T`` (one symmetric product each, both triangles the same
    numbers) on zero; each positive offset is then the exact transpose of its negative one, as the
    whole-stack product's blocks ``(b, a)`` were of its blocks ``(a, b)``. The same dot products, each of one
    group's columns, summed in some order: the rounding of :func:`_support_parts`."""
    d = taps.shape[1]
    zero = index[(0,) * d]
    for tp, cols in parts:
        xs = [np.ascontiguousarray(xg[a] if cols is None else xg[a][:, cols]) for a in tp]
        for ia in range(tp.size):
            rg[zero] += xs[ia] @ xs[ia].T
            for ib in range(ia + 1, tp.size):
                rg[index[tuple(int(v) for v in taps[tp[ia]] - taps[tp[ib]])]] += xs[ia] @ xs[ib].T
    mirror_positive_offsets(rg, index)


def mirror_positive_offsets(rg: np.ndarray, index: dict[tuple[int, ...], int]) -> None:
    """``R_delta = R_{-delta}^T`` for every positive offset (lexicographically above 0), exactly: the block
    products fill only the negative offsets and zero (taps in lexicographic order, ``a < b``)."""
    for dl, k in index.items():
        if dl > (0,) * len(dl):
            rg[k] = rg[index[tuple(-v for v in dl)]].T


def _offset_twiddles(freqs: np.ndarray, deltas: np.ndarray, grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``-2 pi sum_d u_d delta_d / N_d``, the integer products reduced mod N_d exactly first.

    Accuracy (``u = 2^-53``), per axis: numpy forms the angle as ``fl(fl(-2 fl(pi) k) fl(1 / N))``, three
    roundings plus the ``0.36 u`` relative error of ``fl(pi)``, so within ``3.37 u`` relatively of an angle
    below ``2 pi``: ``21.2 u`` absolutely; cos and sin add at most 4 ulps each (``u`` per ulp, the values being
    at most 1; 4 ulps also covers vectorised libm variants), ``sqrt(2) 4 u`` on the complex number: ``27 u``.
    Each of the ``d - 1`` complex products adds ``sqrt(2) gamma_2 < 2.9 u`` (Higham 2002, sec. 3.6), so every
    twiddle is within ``30 d u < TWIDDLE_ULPS d u`` of exact. (The old claim, ``(8d + 4) u``, was exceeded:
    14.4 u on one axis, N = 98, k = 93, and 28.5 u on two.)"""
    tw = np.ones((freqs.shape[0], deltas.shape[0]), dtype=np.complex128)
    for ax, nn in enumerate(grid):
        k = np.outer(freqs[:, ax], deltas[:, ax]) % nn
        tw *= np.exp(-2j * np.pi * k / nn)
    return tw.real.copy(), tw.imag.copy()


def gram_kernel_allowance(gk: GramKernel) -> float:
    """``||fl(G(w)) - A(w) A(w)^H||_2`` bound at every frequency (see the module docstring)."""
    d = gk.deltas.shape[1]
    k = gk.deltas.shape[0] + gk.inner + gk.taps + TWIDDLE_ULPS * d + 8
    gamma = k * EPS64 / (1.0 - k * EPS64)
    return float(np.nextafter(math.sqrt(2.0) * gamma * gk.s_fro2 * (1 + 8 * EPS64), np.inf))


def _paired_offsets(deltas: np.ndarray) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(index of the zero offset, indices of the offsets ``delta > 0`` in lexicographic order, indices of their
    negations), or None where the table is not symmetric (every offset with its negation, zero among them)."""
    index = {tuple(int(v) for v in dl): k for k, dl in enumerate(deltas)}
    zero = index.get((0,) * deltas.shape[1])
    pos = [k for k, dl in enumerate(deltas) if tuple(int(v) for v in dl) > (0,) * deltas.shape[1]]
    neg = [index.get(tuple(-int(v) for v in deltas[k])) for k in pos]
    if zero is None or any(k is None for k in neg) or 1 + 2 * len(pos) != deltas.shape[0]:
        return None
    return zero, np.asarray(pos, dtype=np.intp), np.asarray(neg, dtype=np.intp)


def gram_symbols(gk: GramKernel, freqs: np.ndarray, grid: Sequence[int]) -> Iterator[np.ndarray]:
    """The Gram matrices ``(chunk * groups, m, m)`` (complex128, Hermitian) at ``freqs``, chunk by chunk.

    The offsets come in pairs ``delta, -delta`` with ``R_{-delta} = R_delta^T`` (exactly, in exact arithmetic)
    and conjugate twiddles ``c - i s``, ``c + i s`` (``c + i s`` the twiddle of ``delta``), so
    ``Re G = R_0 + sum_{delta > 0} c (R_delta + R_delta^T)`` and ``Im G = sum_{delta > 0} s (R_delta - R_delta^T)``:
    half the DFT's products. Rounding: ``fl(R_delta)^T`` stands for ``R_{-delta}`` (its error is the transpose
    of ``fl(R_delta)``'s, within the same ``gamma_{n+T}`` budget of the offset ``-delta``), the sum or difference
    adds one rounding per term and each dot product is ``(D + 1) / 2`` long, so every term meets at most
    ``(D + 1) / 2 + 1 <= D`` roundings there (``D >= 3``; ``D = 1`` has no pair): the allowance of
    :func:`gram_kernel_allowance` holds as it is. A table without that symmetry (never built here) takes the
    plain D-term DFT."""
    g, n_off, m = gk.r.shape[:3]
    chunk = max(1, _GRAM_CHUNK_ENTRIES // max(1, g * m * m))
    pairs = _paired_offsets(gk.deltas)
    if pairs is None:
        flat = np.moveaxis(gk.r, 1, 0).reshape(n_off, g * m * m)  # (D, g*m*m)
        re_part, im_part, offsets = flat, flat, gk.deltas
    else:
        zero, pos, _ = pairs
        r_pos = gk.r[:, pos]  # (g, P, m, m)
        r_pos_t = np.swapaxes(r_pos, 2, 3)
        re_part = np.concatenate([gk.r[:, zero : zero + 1], r_pos + r_pos_t], axis=1)
        re_part = np.moveaxis(re_part, 1, 0).reshape(1 + pos.size, g * m * m)
        im_part = np.moveaxis(r_pos - r_pos_t, 1, 0).reshape(pos.size, g * m * m)
        offsets = np.concatenate([gk.deltas[zero : zero + 1], gk.deltas[pos]])
    # Several frequencies per chunk (g m^2 <= 2^17): one product straight into the complex output's real view,
    # the real and imaginary parts' rows interleaved with zeros: numpy's strided writes of two separate parts
    # cost more than the products (64 channels: 0.9 -> 0.6 ms a chunk). A zero weight times a (finite)
    # twiddle adds an exact zero, so every entry is the same dot product as before, in some order: the same
    # allowance; an infinite R_delta entry only meets its own part's twiddles, as before.
    woven = None
    if pairs is not None and chunk > 1:
        woven = np.zeros((re_part.shape[0] + im_part.shape[0], g * m * m, 2))
        woven[: re_part.shape[0], :, 0] = re_part
        woven[re_part.shape[0] :, :, 1] = im_part
        woven = woven.reshape(woven.shape[0], 2 * g * m * m)
    for f0 in range(0, freqs.shape[0], chunk):
        cos, sin = _offset_twiddles(freqs[f0 : f0 + chunk], offsets, grid)
        out = np.empty((cos.shape[0], g * m * m), dtype=np.complex128)
        if woven is not None:
            np.matmul(np.concatenate([cos, sin[:, 1:]], axis=1), woven, out=out.view(np.float64))
        else:
            out.real = cos @ re_part
            out.imag = sin @ im_part if pairs is None else sin[:, 1:] @ im_part
        yield np.swapaxes(out.reshape(-1, g, m, m), 0, 1).reshape(-1, m, m)
