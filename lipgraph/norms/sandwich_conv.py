"""Certificate for circular-convolution sandwich layers ``M sigma(N x + b)``, with rigorous rounding.

N (c_in -> h channels) and M (h -> c_out) are stride-1 circular convolutions on one n_1 x ... x n_d
grid; sigma is elementwise with slopes in [0, 1]. The dense inequality (lipgraph/norms/sandwich.py)

    ||M D N||^2 <= 1 + max(0, lambda_max(G)) ||N||^2,   G = Lambda N N^T Lambda + M^T M - 2 Lambda,

holds for every positive diagonal Lambda on the hidden space (pixel x channel) and every diagonal D in
[0, 1]. Take Lambda per channel, constant over space: ``Lambda = I_grid (x) diag(lambda)``.

*Block diagonalisation.* Let F be the unitary DFT over the grid, applied channel by channel. A circular
correlation with kernel W (taps t, dilation delta, wrap shift p) maps ``X_hat(w)`` to
``W_hat(w) X_hat(w)`` with ``W_hat(w) = e^(i phi_p(w)) sum_t W[t] e^(2 pi i <w, delta t> / n)`` (a channel
matrix per frequency w; the shift only contributes the scalar phase). So ``F N F^H``, ``F M F^H`` are
block diagonal with blocks ``N_hat(w)`` (h x c_in), ``M_hat(w)`` (c_out x h); N's adjoint N^T has blocks
``N_hat(w)^H``; and ``F Lambda F^H = Lambda`` (the same diag(lambda) at every w). Hence ``F G F^H`` is
block diagonal with the Hermitian h x h blocks

    G(w) = Lambda N_hat(w) N_hat(w)^H Lambda + M_hat(w)^H M_hat(w) - 2 Lambda,

so ``lambda_max(G) = max_w lambda_max(G(w))`` and ``||N|| = max_w ||N_hat(w)||``. The scalar phases cancel
in ``N_hat N_hat^H`` and ``M_hat^H M_hat``, so the wrap shifts of the two convs need not agree. Real kernels
give ``G(-w) = conj(G(w))`` (the same eigenvalues): half the grid suffices. (The code's twiddles carry the
opposite sign for both kernels, i.e. it visits the blocks at -w: the same set.)

*The family.* Wang and Manchester (2023) define ``N_hat(w) = sqrt2 Psi^-1 B_w``, ``M_hat(w) = sqrt2 A_w^H Psi``
with ``A_w A_w^H + B_w B_w^H = I`` at every w: ``G(w) = 0`` at ``lambda = psi^2``. Lambda is found from the
kernels: summed over w (Parseval), ``G(w) = 0`` gives ``lambda_i lambda_j (sum_t N_t N_t^T)_ij =
-(sum_t M_t^T M_t)_ij`` for the kernels wrapped onto the grid (taps summed modulo n), the dense problem of
:func:`lipgraph.norms.sandwich.lbdn_lambda_candidates`. Any positive lambda is sound.

*Rounding.* Each symbol is a direct DFT with the allowance of :func:`lipgraph.norms.conv_fft._dft_allowance`
(``||N_hat(w) - fl(N_hat(w))||_2 <= e_N``), plus the caller's bound on the kernels' own rounding. A symbol
error e moves ``Lambda N N^H Lambda`` by at most ``max(lambda)^2 (2 ||N_hat|| e + e^2)`` and ``M^H M`` by
``2 ||M_hat|| e + e^2`` (Weyl); forming G(w) in complex float64 errs by at most
``2 gamma_(k+8) || |Lambda N||Lambda N|^H + |M|^H |M| + 2 Lambda ||_F`` (Higham 2002, sec. 3.5 and 3.6,
doubled for complex products); ``eigvalsh`` adds its backward error ``(8h + 4) u ||G(w)||_F``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lipgraph.norms import EPS64
from lipgraph.norms.conv_fft import _dft_allowance, _half_frequencies, _twiddles, phase_kernel
from lipgraph.norms.rounding import gamma
from lipgraph.norms.sandwich import certificate_from_gap, lbdn_lambda_candidates
from lipgraph.norms.stack_sv import top_sv_stack

_U = EPS64
# Above this many complex symbol entries (frequencies x channel matrices) the certificate is not tried.
MAX_SYMBOL_ENTRIES = 20_000_000


def _gamma(k: int) -> float:
    return gamma(k, _U)


def dense_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped kernel (M, C/g, k...) as the equivalent ungrouped one (M, C, k...), zero off its blocks."""
    w = np.asarray(weight, dtype=np.float64)
    if groups == 1:
        return w
    mg, cg = w.shape[0] // groups, w.shape[1]
    full = np.zeros((w.shape[0], cg * groups) + w.shape[2:])
    for g in range(groups):
        full[g * mg : (g + 1) * mg, g * cg : (g + 1) * cg] = w[g * mg : (g + 1) * mg]
    return full


def circular_symbols(
    weight: np.ndarray, dilations: Sequence[int], grid: Sequence[int], freqs: np.ndarray
) -> tuple[np.ndarray, float]:
    """(symbols (F, M, C) at ``freqs``, allowance on each symbol's spectral norm) of an ungrouped kernel."""
    d = weight.ndim - 2
    pk = phase_kernel(weight, 1, [1] * d, dilations)  # (1, M, C, K...): the dilated kernel
    a, b = pk.shape[1:3]
    flat = pk.reshape(a * b, -1).T  # (taps, M*C)
    cos, sin = _twiddles(freqs, pk.shape[3:], grid)
    sym = (cos @ flat + 1j * (sin @ flat)).reshape(-1, a, b)
    return sym, _dft_allowance(pk)


def wrapped_kernel(weight: np.ndarray, dilations: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """The dilated kernel with its taps summed modulo the grid: (M, C, n_1, ..., n_d). Same circular op."""
    d = weight.ndim - 2
    out = phase_kernel(weight, 1, [1] * d, dilations)[0]  # (M, C, K...)
    for ax, n in enumerate(grid, start=2):
        reps = -(-out.shape[ax] // n)
        widths = [(0, 0)] * out.ndim
        widths[ax] = (0, reps * n - out.shape[ax])
        padded = np.pad(out, widths)
        out = padded.reshape(padded.shape[:ax] + (reps, n) + padded.shape[ax + 1 :]).sum(axis=ax)
    return out


def lambda_candidates(m_wrapped: np.ndarray, n_wrapped: np.ndarray) -> list[np.ndarray]:
    """Per-channel lambdas from the grid-summed Gram matrices (exact ``psi^2`` for the family)."""
    h = n_wrapped.shape[0]
    n_flat = n_wrapped.reshape(h, -1)  # n_flat n_flat^T = sum_t N_t N_t^T
    m_flat = np.moveaxis(m_wrapped, 1, -1).reshape(-1, h)  # m_flat^T m_flat = sum_t M_t^T M_t
    return lbdn_lambda_candidates(m_flat, n_flat)


def _upper_gap(n_sym: np.ndarray, m_sym: np.ndarray, lam: np.ndarray, e_n: float, e_m: float) -> float:
    """Upper bound of ``max_w lambda_max(G(w))`` for the exact operators (see the module docstring)."""
    h = lam.size
    ln = lam[None, :, None] * n_sym  # (F, h, c_in)
    mh = np.conj(np.swapaxes(m_sym, 1, 2))
    g = ln @ np.conj(np.swapaxes(ln, 1, 2)) + mh @ m_sym - 2.0 * np.diag(lam)[None]
    g = (g + np.conj(np.swapaxes(g, 1, 2))) / 2.0
    lam_top = np.linalg.eigvalsh(g)[:, -1]
    aln, am = np.abs(ln), np.abs(m_sym)
    absb = aln @ np.swapaxes(aln, 1, 2) + np.swapaxes(am, 1, 2) @ am + 2.0 * np.diag(np.abs(lam))[None]
    k = max(n_sym.shape[2], m_sym.shape[1]) + 8
    form_err = 2.0 * _gamma(k) * np.linalg.norm(absb, axis=(1, 2)) * 1.01
    n_f = np.linalg.norm(n_sym, axis=(1, 2)) * 1.01  # >= ||N_hat(w)||_2
    m_f = np.linalg.norm(m_sym, axis=(1, 2)) * 1.01
    lmax2 = float(np.max(lam)) ** 2 * (1 + 4 * _U)
    pert = lmax2 * (2.0 * n_f * e_n + e_n * e_n) + (2.0 * m_f * e_m + e_m * e_m)
    eig_err = (8 * h + 4) * _U * np.linalg.norm(g, axis=(1, 2)) * (1 + 4 * _U)
    up = (lam_top + (eig_err + form_err + pert) * (1 + 8 * _U)).max()
    return float(np.nextafter(float(up), np.inf))


@dataclass(frozen=True)
class CircularSandwichBounds:
    """Sound bounds for the block: ``||N||``, ``||M||`` and, when it was computed, the certificate of
    ``max_D ||M D N||`` with the gap ``max_w lambda_max(G(w))`` it used."""

    n_norm: float
    m_norm: float
    certificate: float | None = None
    gap: float | None = None
    lam_scale: float | None = None  # max(lambda) of the Lambda that gave the gap (G's natural scale)


def circular_sandwich_bounds(
    m_kernel: np.ndarray,
    m_dilations: Sequence[int],
    n_kernel: np.ndarray,
    n_dilations: Sequence[int],
    grid: Sequence[int],
    m_err: float = 0.0,
    n_err: float = 0.0,
) -> CircularSandwichBounds:
    """Norms of N and M and the certificate, from one set of symbols.

    ``m_kernel`` (c_out, h, k...) and ``n_kernel`` (h, c_in, k...) are ungrouped stride-1 circular convs
    on ``grid``; ``m_err`` / ``n_err`` bound the operator norm of the difference between the true
    operators and these kernels (the rounding of folded scalings). Above :data:`MAX_SYMBOL_ENTRIES`
    only the norms are computed (frequency-chunked, :func:`lipgraph.norms.circular.circular_conv_norm`).
    """
    h = n_kernel.shape[0]
    if m_kernel.shape[1] != h:
        raise ValueError(f"M reads {m_kernel.shape[1]} channels, N writes {h}")
    grid = tuple(int(v) for v in grid)
    freqs = _half_frequencies(grid)
    entries = freqs.shape[0] * (h * n_kernel.shape[1] + m_kernel.shape[0] * h + h * h)
    if entries > MAX_SYMBOL_ENTRIES:
        from lipgraph.norms.circular import circular_conv_norm

        ones = [1] * len(grid)
        n_norm = circular_conv_norm(n_kernel, 1, ones, n_dilations, grid).value + n_err
        m_norm = circular_conv_norm(m_kernel, 1, ones, m_dilations, grid).value + m_err
        return CircularSandwichBounds(_up(n_norm), _up(m_norm))
    n_sym, n_dft = circular_symbols(n_kernel, n_dilations, grid, freqs)
    m_sym, m_dft = circular_symbols(m_kernel, m_dilations, grid, freqs)
    e_n, e_m = n_dft + n_err, m_dft + m_err
    # ||N|| = max_w ||N_hat(w)||: certified top singular values of the computed symbols, plus their error
    n_norm, m_norm = _up(top_sv_stack(n_sym) + e_n), _up(top_sv_stack(m_sym) + e_m)
    best, scale = math.inf, None
    cands = lambda_candidates(wrapped_kernel(m_kernel, m_dilations, grid), wrapped_kernel(n_kernel, n_dilations, grid))
    for lam in reversed(cands):  # the least-squares solution first: exact for the family
        if np.all(lam > 0) and np.all(np.isfinite(lam)):
            gap = _upper_gap(n_sym, m_sym, lam, e_n, e_m)
            if gap < best:
                best, scale = gap, float(np.max(lam))
            if certificate_from_gap(best, n_norm) <= 1 + 1e-6:
                break  # another Lambda could gain at most 1e-6 (the certificate is >= 1)
    if not math.isfinite(best):
        return CircularSandwichBounds(n_norm, m_norm)
    return CircularSandwichBounds(n_norm, m_norm, certificate_from_gap(best, n_norm), best, scale)


def _l1_err(arr: np.ndarray, ops: int) -> float:
    """Operator-norm bound of the rounding of ``ops`` float64 products per entry of the kernel ``arr``:
    each entry errs by at most ``(ops + 1) u`` of itself, and a circular conv's norm is at most the sum
    of its absolute taps (each tap is a circular shift, of norm 1)."""
    return _up(float(np.sum(np.abs(arr))) * (ops + 1) * _U * 1.01)


_CACHE: dict[bytes, CircularSandwichBounds] = {}
_CACHE_LOCK = threading.Lock()


def block_bounds(attrs: dict) -> CircularSandwichBounds:
    """The bounds of a fused ``CircularSandwich`` block from its attributes (kernels ``n`` and ``m`` with
    their groups and dilations, the per-channel scalings ``c_mid`` (into N's rows) and ``c_pre`` (into
    M's columns), the number of scaling nodes, the grid). Cached on the constants' bytes: the pass and
    the rule ask for the same block."""
    import hashlib

    arrays = [np.ascontiguousarray(attrs[k], dtype=np.float64) for k in ("n", "m", "c_mid", "c_pre")]
    meta = repr([attrs[k] for k in ("n_group", "m_group", "n_dilations", "m_dilations", "grid", "scalings")])
    h = hashlib.sha256(meta.encode())
    for a in arrays:
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    key = h.digest()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    n = dense_groups(arrays[0], int(attrs["n_group"]))
    m = dense_groups(arrays[1], int(attrs["m_group"]))
    n = n * arrays[2].reshape((-1,) + (1,) * (n.ndim - 1))  # rows: N's output channels
    m = m * arrays[3].reshape((1, -1) + (1,) * (m.ndim - 2))  # columns: M's input channels
    ops = 2 * int(attrs["scalings"]) + 2  # a Div's reciprocal and each product: one rounding each
    grid = [int(v) for v in attrs["grid"]]
    out = circular_sandwich_bounds(
        m, attrs["m_dilations"], n, attrs["n_dilations"], grid, _l1_err(m, ops), _l1_err(n, ops)
    )
    with _CACHE_LOCK:
        if len(_CACHE) >= 16:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = out
    return out


def _up(x: float) -> float:
    return float(np.nextafter(x * (1 + 4 * _U), np.inf))
