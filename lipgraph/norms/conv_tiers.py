"""Two tiers of precision for the circulant bound of a conv: float32 below the maximum, float64 at it.

The bound is ``max_w sigma_1(A(w))`` over the frequencies of a grid (Sedghi, Gupta, Long 2019). Only the
frequencies at (or within about 1e-3 of) the maximum decide its value; every other one only has to be
shown below it. So:

1. every Gram matrix is formed in float32 from the float64 symbols, with its rigorous allowance
   (:mod:`lipgraph.norms.stack_sv32`);
2. a few power steps rank the frequencies; the top few get the float64 certificate of
   :mod:`lipgraph.norms.stack_sv` (float64 symbols, Gram, Lanczos trial value, Cholesky): ``lambda*``;
3. every other frequency is certified ``<= lambda*`` by a float32 Cholesky factorisation whose trial value
   sits below ``lambda*`` by the float32 allowances (checked a posteriori);
4. the frequencies that this fails for (near the maximum, or mis-ranked) get the float64 certificate
   with ``lambda*`` as the first trial value.

The result is the float64 certificate's value (as tight as before: within ``sqrt(1 + 1e-4)`` of the
exact maximum). Used where the symbols' Gram products dominate (wide layers on few frequencies, where the
kernel-autocorrelation path of :mod:`lipgraph.norms.conv_gram` does not pay): measured 15-20% faster on
the 512-channel layers of a CIFAR ResNet-18 (float32 products and factorisations run 1.5-1.9x and
1.1-1.6x faster than float64 on one AVX2 core; the top frequencies and the ranking are extra work).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from lipgraph.norms.conv_gram import _offset_twiddles
from lipgraph.norms.stack_sv import certify_gram_stack, gram_stack, lanczos_top
from lipgraph.norms.stack_sv32 import chol32_estimate, cholesky32_below, gram32

# Frequencies that get the float64 certificate first at least (the highest by the float32 Lanczos estimate).
TOP_CANDIDATES = 1
# Smaller side of the symbols from which the float32 tier runs (below it the float64 path is as fast).
TIER_MIN_SIDE = 128
# Lanczos steps of the float32 estimates that rank the frequencies. With 8, a CIFAR ResNet-18's 512-channel
# 4 x 4 layers were mis-ranked (the top frequency's estimate 0.91 of its eigenvalue, eighth of 13): the
# float64 certificate went to the wrong frequency, the true top failed the float32 test below it and took a
# second float64 Gram matrix, Lanczos run and factorisation. 12 steps rank every top frequency of that
# network first (estimates within 0.6%) for about 1 ms more per layer: 0.83 -> 0.71 s on those three layers.
LANCZOS32_STEPS = 12
# The float32 Gram matrices of one conv are kept at once: above this many bytes the float64 path runs.
_MAX_BYTES32 = 2**28
# Complex entries of symbols formed per chunk (float64: 64 MiB).
_CHUNK_ENTRIES = 4_000_000


def symbol_parts(pk: np.ndarray, freqs: np.ndarray, grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts ``(g * F, mg, cp)`` (float64, group-major) of the symbols at every frequency.

    One product per group with the cosines and sines stacked (no complex array is assembled: the float32
    tier reads the parts, the float64 tier joins the few it needs)."""
    g, mg, cp = pk.shape[:3]
    qs = pk.shape[3:]
    n_freq = freqs.shape[0]
    taps = np.indices(qs).reshape(len(qs), -1).T  # (T, d)
    cos, sin = _offset_twiddles(freqs, taps, grid)
    # Two arrays, not one of both parts: each stays below glibc's mmap threshold (32 MiB; a ResNet's
    # 512-channel layer: 27 MiB each, 54 MiB together), so it reuses freed heap memory instead of being
    # mapped, faulted in page by page (6.7 ms per 27 MiB measured) and unmapped again at every layer.
    re = np.empty((g, n_freq, mg * cp))
    im = np.empty((g, n_freq, mg * cp))
    for grp in range(g):
        flat = pk[grp].reshape(mg * cp, -1).T
        np.matmul(cos, flat, out=re[grp])
        np.matmul(sin, flat, out=im[grp])
    return re.reshape(g * n_freq, mg, cp), im.reshape(g * n_freq, mg, cp)


def tiered_fits(pk_shape: Sequence[int], n_freq: int) -> bool:
    """Whether the float32 Gram matrices (and the float64 symbols) of every frequency fit in the memory cap."""
    g, mg, cp = pk_shape[:3]
    k = min(mg, cp)
    size = g * n_freq * max(k * k * 8, mg * cp * 16)
    return k >= TIER_MIN_SIDE and size <= _MAX_BYTES32 and g * n_freq > 1


def tiered_gram_bound(pk: np.ndarray, freqs: np.ndarray, grid: Sequence[int]) -> tuple[float, dict[str, int]]:
    """Sound upper bound of ``max lambda_max(A A^H)`` over the float64 symbols A of every (group, frequency).

    The caller adds the float64 symbols' DFT allowance to the singular value. Returns (bound, how many
    frequencies each precision certified).
    """
    re, im = symbol_parts(pk, freqs, grid)
    gram, err = gram32(re, im)
    chunk = max(1, _CHUNK_ENTRIES // max(1, pk.shape[1] * pk.shape[2]))
    return certify_two_tiers(gram, err, lambda idx: re[idx] + 1j * im[idx], chunk)


def _rank_estimates(gram: np.ndarray) -> np.ndarray:
    """Estimates (not bounds) of every matrix's largest eigenvalue, to rank them: float32 Lanczos.

    Where the float32 recurrence overflows (Gram entries above about 2^63, which both tiers admit: a single
    weight of 2^33 does it; the autocorrelation tier takes weights up to 2^40), numpy's tridiagonal eigensolve
    meets NaN and raises; the largest diagonal entry (in float64, NaN read as inf) ranks them instead, an
    estimate within a factor k of the largest eigenvalue. Soundness does not depend on the ranking."""
    k = gram.shape[1]
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            est = lanczos_top(gram, steps=min(k, LANCZOS32_STEPS))
        except np.linalg.LinAlgError:
            est = None
    if est is not None and bool(np.all(np.isfinite(est))):
        return est
    d = np.arange(k)
    diag = gram[:, d, d].real.astype(np.float64).max(axis=1, initial=0.0)
    return np.where(np.isnan(diag), np.inf, diag)


def certify_two_tiers(
    gram: np.ndarray, err: np.ndarray, symbols64: Callable[[np.ndarray], np.ndarray], chunk: int
) -> tuple[float, dict[str, int]]:
    """Steps 2-4 of the module docstring: a sound upper bound of ``max_f lambda_max(exact Gram_f)``.

    ``gram`` (complex64) are the float32 Gram matrices, each (the Hermitian completion of its lower triangle
    and real diagonal, which is what the float32 Cholesky reads) within ``err[f]`` (2-norm) of the exact Gram of
    the symbol ``symbols64([f])`` (float64, or of the exact symbol that float64 one is within the caller's DFT
    allowance of); ``symbols64(idx)`` returns the float64 symbols ``(len(idx), mg, cp)`` of the matrices
    ``idx``, formed only for the few frequencies float64 has to decide (``chunk`` at a time). The bound is
    that of the float64 certificate on those; float32 only proves the others below it. Returns (bound, how
    many matrices each precision certified).
    """
    k = gram.shape[1]
    # Estimates (not bounds) rank the frequencies: those within the float32 allowances of the top one
    # cannot be shown below it in float32 and go to float64 directly.
    est = _rank_estimates(gram)
    top = float(est.max())
    band = float(err.max()) / max(top, 1e-300) + chol32_estimate(k)
    order = np.argsort(-est, kind="stable")
    near = est[order] >= top * (1.0 - band)
    near[:TOP_CANDIDATES] = True
    hi, rest = order[near], order[~near]
    g64, err64 = gram_stack(symbols64(hi))
    sq = certify_gram_stack(g64, err64)
    ok, _ = cholesky32_below(gram, err[rest], sq, rows=rest)  # no copy of gram[rest]: one in the factorisation
    fail = rest[~ok]
    for s0 in range(0, fail.size, chunk):
        sel = fail[s0 : s0 + chunk]
        g64, err64 = gram_stack(symbols64(sel))
        sq = max(sq, certify_gram_stack(g64, err64, floor=sq))
    return sq, {"float64": int(hi.size + fail.size), "float32": int(ok.sum())}
