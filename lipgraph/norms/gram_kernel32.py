"""A float32 tier for the autocorrelation (Gram-kernel) path of the circulant conv bound.

:mod:`lipgraph.norms.conv_gram` forms every frequency's Gram matrix ``G(w) = sum_delta R_delta e^{-i<w,delta>}``
from the kernel's autocorrelation ``R_delta = sum_{q-q'=delta} P_q P_q'^T`` in float64. Here the same
construction runs in single precision (the stacked-tap product, the accumulation of ``R_delta`` and the
per-frequency DFT), with a rigorous allowance, and the scheme of :mod:`lipgraph.norms.conv_tiers` decides:
a float32 Lanczos ranking, the float64 certificate of :mod:`lipgraph.norms.stack_sv` on the top
frequencies (their Gram matrices formed in float64 directly from their symbols: a few frequencies, so the
float64 stacked-tap product is not needed), a float32 Cholesky factorisation proving every other frequency
below that value, and the float64 certificate again for the frequencies where that fails. The bound is the
float64 certificate's value; float32 only decides "below".

Allowance (``u = 2^-24``, ``gamma_k = k u / (1 - k u)``; Higham, *Accuracy and Stability of Numerical
Algorithms*, 2002, sec. 3.1 and 3.5, any summation order; Lemma 3.3 to compose relative factors). Every
real part of a computed ``G(w)`` entry is a sum of terms ``t_delta p_{q,ik} p_{q',jk}`` (``t`` a cosine or
sine, ``|t| <= 1``); along its way each term meets: the rounding of both weights to float32 (2), the
product and the blocked inner sum of the stacked-tap product (``depth = b + c``: blocks of ``b`` terms,
then ``c`` block results added one by one, :func:`lipgraph.norms.stack_sv32.blocked_product32`), the
accumulation of at most ``T`` blocks into ``R_delta`` (``T``), the twiddle (computed in float64 within
``32 d 2^-53`` of exact (:func:`lipgraph.norms.conv_gram._offset_twiddles`), then rounded to float32: an
absolute ``2u`` on a number of modulus at most 1: 3), and the product and sum of the D-term DFT (``D``).
So the real part errs by at most ``gamma_K (S S^T)_ij`` with ``K = D + depth + T + 8`` and
``S = sum_q |P_q|`` (entrywise), because the absolute terms add up to
``sum_delta sum_{q-q'=delta} (|P_q| |P_q'|^T)_ij = (S S^T)_ij``; the complex entry by ``sqrt(2)`` times
that, and as ``|E| <= sqrt(2) gamma_K S S^T`` entrywise, ``||E||_2 <= sqrt(2) gamma_K rho(S S^T)`` with
``rho(S S^T) <= min(||S||_F^2, max_i (S (S^T 1))_i)`` (Frobenius, and Collatz-Wielandt with the all-ones
vector), evaluated in float64 with a relative margin.

Underflow. Gradual underflow adds an absolute ``2^-150`` per rounding, and a flush-to-zero/denormals-are-zero
mode (set process-wide by some libraries) up to ``2^-126`` per operation and per operand. A weight's
operand error ``2^-126`` reaches the entry multiplied by the other weight (at most ``amax``); every later
rounding multiplies earlier errors by at most ``1 + gamma_K <= 2``. Per real entry that is at most
``2^-125 N (3 + 2 amax)`` with ``N = D (T n + T) + 2 D + 8`` operations, and ``m`` times that bounds the
2-norm (``||E||_2 <= ||E||_F <= m max|e_ij|``): about ``2^-100`` on a 512-channel layer, negligible beside
targets of at least ``2^-60`` (:func:`lipgraph.norms.stack_sv32.cholesky32_below`). Overflow: the tier is
not used unless ``max|P| <= 2^40`` and ``||S||_F^2 <= 2^100``, so no partial sum can leave float32's range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipgraph.norms.conv_gram import _BLOCK_MIN_SIDE, _SYRK_SLOWDOWN, _offset_twiddles, mirror_positive_offsets, tap_l1
from lipgraph.norms.conv_tiers import certify_two_tiers, symbol_parts
from lipgraph.norms.stack_sv32 import INNER_BLOCK, _up, blocked_product32, gamma32

# Smaller side of the Gram matrices from which this tier may run (below it the float64 path is as fast).
KERNEL32_MIN_SIDE = 128
# The float32 Gram matrices of one conv (all frequencies) are kept at once; above this many bytes, float64.
_MAX_BYTES32 = 2**28
# Stacked-tap products (T m)^2 larger than this many float32 entries: float64 (its own cap is the same).
_MAX_STACK_ENTRIES = 2**26
# Range where no float32 partial sum can overflow: max |weight| and ||sum_q |P_q| ||_F^2.
_MAX_ENTRY, _MAX_SFRO2 = 2.0**40, 2.0**100
# Cost model (flop-equivalents at the float64 rate), from one AVX2 core (OpenBLAS) on the layers of a CIFAR
# ResNet-18: the float32 stacked-tap product runs at 0.4x the float64 time in one inner block and gains
# nothing once it is cut into blocks (several products of short inner length); the float32 DFT at 0.5x;
# the float32 factorisation plus its Collatz-Wielandt bound costs what the float64 factorisation does
# (k = 128 ... 512); the float32 Lanczos ranking of every frequency about 256 m^2 each; and the top
# frequencies (expected: 2) get a float64 symbol, Gram product and factorisation.
_SYRK32_SPEED, _DFT32_SPEED, _RANK32_PER_M2 = 0.4, 0.5, 256.0
_EXPECTED_TOP = 2
# Complex entries of float64 symbols formed per chunk for the fallback frequencies (64 MiB).
_CHUNK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class GramKernel32:
    """Float32 autocorrelation ``r[g, k] = fl32(R_delta)`` for ``deltas[k]`` and the allowance ``err`` of every
    frequency's Gram matrix formed from it by :func:`gram_symbols32` (2-norm, any frequency, any group)."""

    r: np.ndarray  # (groups, D, m, m) float32
    deltas: np.ndarray  # (D, d) int
    err: float


def kernel32_fits(pk_shape: Sequence[int], n_freq: int) -> bool:
    """Whether the float32 tier may run on this phase kernel: wide enough, within the memory caps, and cheaper
    than the float64 autocorrelation path by the measured cost model above (the terms of
    :func:`lipgraph.norms.conv_gram.gram_kernel_cost` plus the factorisations)."""
    g, mg, cp = pk_shape[:3]
    m, n = min(mg, cp), max(mg, cp)
    t = math.prod(pk_shape[3:])
    if m < KERNEL32_MIN_SIDE or g * n_freq <= _EXPECTED_TOP:
        return False
    if g * n_freq * m * m * 8 > _MAX_BYTES32 or (t * m) ** 2 > _MAX_STACK_ENTRIES:
        return False
    n_off = math.prod(2 * q - 1 for q in pk_shape[3:])
    syrk = g * _SYRK_SLOWDOWN * (t * m) ** 2 * n
    dft = g * (4.0 * n_off * n_freq * m * m + 2.0 * n_freq * m * m)
    chol = g * n_freq * 4.0 / 3.0 * m**3
    cost64 = syrk + dft + chol
    direct = 4.0 * t * m * n + _SYRK_SLOWDOWN * 2.0 * m * m * n + 2.0 * m * m * n + 4.0 / 3.0 * m**3
    cost32 = (
        syrk * (_SYRK32_SPEED if n <= INNER_BLOCK else 1.0)
        + dft * _DFT32_SPEED
        + chol
        + g * n_freq * _RANK32_PER_M2 * m * m
        + _EXPECTED_TOP * direct
    )
    return cost32 < cost64


def _rho_abs(s: np.ndarray, taps: int) -> float:
    """Upper bound of ``rho(S S^T)`` for ``S = sum_q |P_q|`` (m x n) as summed in float64 over ``taps`` taps:
    ``min(||S||_F^2, max_i (S S^T 1)_i)`` (Frobenius; Collatz-Wielandt with the all-ones vector).

    Sums of nonnegative float64 terms (S itself, then these), each covered by a relative ``gamma`` (float64)
    of its number of terms with a factor 4 to spare: ``m n + T + 8`` for the Frobenius norm (a sum of
    ``m n`` squares: an all-positive rank-one S with small entries that a BLAS dot drops came out 8e-13
    below ``rho`` with the ``m + n`` count alone), ``m + n + T + 8`` for the row sums."""
    m, n = s.shape
    fro2 = float(_up(float(np.vdot(s, s)), 4 * (m * n + taps + 8) * 2.0**-53))
    rows = float(_up(float((s @ s.sum(axis=0)).max(initial=0.0)), 4 * (m + n + taps + 8) * 2.0**-53))
    return min(fro2, rows)


def gram_kernel32(pk: np.ndarray) -> GramKernel32 | None:
    """``fl32(R_delta)`` on the smaller side of the phase kernel ``(g, mg, cp, Q...)`` and its allowance (module
    docstring); None where float32 could overflow (large or non-finite weights: the float64 path decides)."""
    g, mg, cp = pk.shape[:3]
    qs = tuple(pk.shape[3:])
    d = len(qs)
    amax = float(np.abs(pk).max(initial=0.0))
    if not amax <= _MAX_ENTRY:  # also NaN
        return None
    taps = np.indices(qs).reshape(d, -1).T  # (T, d)
    t = taps.shape[0]
    x = np.moveaxis(pk.reshape(g, mg, cp, t), 3, 1)  # (g, T, mg, cp)
    if cp < mg:
        x = np.swapaxes(x, 2, 3)  # the smaller side first, as conv_gram.gram_kernel
    m, n = x.shape[2], x.shape[3]
    span = tuple(2 * q - 1 for q in qs)
    deltas = np.indices(span).reshape(d, -1).T - (np.asarray(qs) - 1)  # (D, d)
    n_off = deltas.shape[0]
    index = {tuple(int(v) for v in dl): k for k, dl in enumerate(deltas)}
    slot = [[index[tuple(int(v) for v in taps[a] - taps[b])] for b in range(t)] for a in range(t)]
    r = np.zeros((g, n_off, m, m), dtype=np.float32)
    rho = 0.0
    depth = 0
    l1 = tap_l1(pk)
    for gi in range(g):
        s = l1[gi] if cp >= mg else l1[gi].T  # float64 S = sum_q |P_q| (its rounding: in _rho_abs's margin)
        rho = max(rho, _rho_abs(s, t))
        if not rho <= _MAX_SFRO2:
            return None
        if m >= _BLOCK_MIN_SIDE:  # block by block, as conv_gram._block_products (same products, same depth)
            depth = _block_products32(np.ascontiguousarray(x[gi], dtype=np.float32), taps, index, r[gi])
            continue
        stack = np.ascontiguousarray(x[gi].reshape(t * m, n), dtype=np.float32)
        z, depth = blocked_product32(stack)  # every block (a, b) is fl32(X_a X_b^T)
        for a in range(t):
            for b in range(t):
                r[gi, slot[a][b]] += z[a * m : (a + 1) * m, b * m : (b + 1) * m]
    k = n_off + depth + t + 8
    ops = n_off * (t * n + t) + 2 * n_off + 8
    err = math.sqrt(2.0) * gamma32(k) * rho * (1 + 1e-12)
    err += math.sqrt(2.0) * m * ops * 2.0**-125 * (3.0 + 2.0 * amax)  # underflow, flush-to-zero included
    return GramKernel32(r, deltas, float(_up(err, 1e-12)))


def _block_products32(xs: np.ndarray, taps: np.ndarray, index: dict[tuple[int, ...], int], rg: np.ndarray) -> int:
    """``fl32(R_delta)`` of one group (``xs``: float32 taps (T, m, n)) accumulated into ``rg`` (D, m, m; zero on
    entry), one blocked product per pair of taps; returns the products' depth (:func:`blocked_product32`).

    The whole stacked-tap product's block ``(a, b)`` is the blocked product of ``X_a`` and ``X_b`` over the same
    inner blocks, so every term meets the same roundings (the same ``depth``, then at most ``T`` additions
    into ``R_delta``): the allowance is unchanged. As in :func:`lipgraph.norms.conv_gram._block_products`, for
    ``a < b`` the offset ``q_a - q_b`` is negative, and each positive offset is the exact transpose of its
    negative one (the symmetric product's blocks ``(b, a)`` were the transposes of its blocks ``(a, b)``).
    Measured on a 256-channel 3 x 3 kernel, one thread: 22 -> 13 ms (numpy's symmetric product of the
    2304 x 256 stack copies its triangle afterwards)."""
    t = xs.shape[0]
    d = taps.shape[1]
    zero = index[(0,) * d]
    depth = 0
    for a in range(t):
        z, depth = blocked_product32(xs[a])
        rg[zero] += z
        for b in range(a + 1, t):
            z, _ = blocked_product32(xs[a], xs[b])
            rg[index[tuple(int(v) for v in taps[a] - taps[b])]] += z
    mirror_positive_offsets(rg, index)
    return depth


def gram_symbols32(gk: GramKernel32, freqs: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """The Gram matrices ``(groups * F, m, m)`` (complex64, group-major) at every frequency of ``freqs``.

    One float32 product of the offsets' twiddles (float64, reduced mod N exactly, then rounded to float32)
    with the stacked ``R_delta`` for each of the real and imaginary parts. The matrices are Hermitian up to
    rounding; the allowance holds for every entry, so for the Hermitian completion of either triangle."""
    g, n_off, m = gk.r.shape[:3]
    flat = np.moveaxis(gk.r, 1, 0).reshape(n_off, g * m * m)  # (D, g*m*m)
    cos, sin = _offset_twiddles(freqs, gk.deltas, grid)
    out = np.empty((freqs.shape[0], g * m * m), dtype=np.complex64)
    out.real = cos.astype(np.float32) @ flat
    out.imag = sin.astype(np.float32) @ flat
    return np.ascontiguousarray(np.swapaxes(out.reshape(-1, g, m, m), 0, 1)).reshape(-1, m, m)


def kernel32_gram_bound(pk: np.ndarray, freqs: np.ndarray, grid: Sequence[int]) -> tuple[float, dict[str, int]] | None:
    """Sound upper bound of ``max lambda_max(A A^H)`` over the exact symbols A of every (group, frequency), or
    None where float32 cannot be used (the caller runs the float64 path).

    The float64 certificate works on float64 symbols (:func:`lipgraph.norms.conv_tiers.symbol_parts`): the
    caller adds their DFT allowance to the singular value, as on the direct float32 tier. Returns (bound,
    how many matrices each precision certified)."""
    gk = gram_kernel32(pk)
    if gk is None:
        return None
    gram = gram_symbols32(gk, freqs, grid)
    n_freq = freqs.shape[0]

    def symbols64(idx: np.ndarray) -> np.ndarray:
        # Matrix i is (group i // F, frequency i % F): one symbol product per distinct frequency.
        fs, inv = np.unique(idx % n_freq, return_inverse=True)
        re, im = symbol_parts(pk, freqs[fs], grid)
        sel = (idx // n_freq) * fs.size + inv.reshape(-1)
        return re[sel] + 1j * im[sel]

    chunk = max(1, _CHUNK_ENTRIES // max(1, pk.shape[1] * pk.shape[2]))
    err = np.full(gram.shape[0], gk.err)
    return certify_two_tiers(gram, err, symbols64, chunk)
