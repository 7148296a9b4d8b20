"""Spectral norms of dense matrices, with the rounding allowance of docs/floating-point.md."""

from __future__ import annotations

import numpy as np

from lipgraph.norms import EPS64, NormBound, discarded, inflate

# Above this many entries in the smaller Gram matrix an SVD is slow; Gram iteration takes over.
_SVD_LIMIT = 4096
# Above this smaller side a full SVD costs minutes (4096 x 4096: ~60 s on one core); the largest singular
# value is certified instead by a Cholesky factorisation of ``mu I - A^T A`` (lipgraph.norms.stack_sv).
_CERTIFY_MIN = 1024


def spectral_norm(matrix: np.ndarray) -> NormBound:
    """Sound upper bound of ``||A||_2`` for a 2-D array (computed in float64).

    Exact SVD for ordinary sizes (``sigma_hat / (1 - p eps)``, docs/floating-point.md); for very large
    matrices, Gram iteration (Delattre et al. 2023), which is an upper bound at every step.
    A lower estimate is the SVD value itself (or a few power steps for the Gram path).
    """
    if discarded():  # the caller throws the value away (see lipgraph.norms.values_discarded)
        return NormBound(1.0, "not computed (value discarded)", None)
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"spectral_norm expects a matrix, got shape {a.shape}")
    if a.size == 0:
        return NormBound(0.0, "empty", 0.0)
    if not np.all(np.isfinite(a)):
        return NormBound(float("inf"), "non-finite weights", None)
    m, n = a.shape
    if min(m, n) == 1:
        # A vector: its Euclidean norm, with a summation allowance. Scaled by a power of two near its largest
        # entry first (exact): squares of entries below ~1e-154 would underflow (a 1e-200 weight gave 5e-324),
        # and each square that still underflows loses less than 2^-1022, added per entry.
        top = float(np.max(np.abs(a)))
        if top == 0.0:
            return NormBound(0.0, "exact (vector)", 0.0)
        exponent = int(np.frexp(top)[1])
        b = np.ldexp(a, -exponent)
        scaled = float(np.sqrt(np.sum(b * b) + a.size * 2.0**-1022))
        s = float(np.ldexp(inflate(scaled, max(m, n)), exponent))
        s = float(np.nextafter(s, np.inf)) if s < 2.0**-1021 else s  # scaling back into subnormals rounds
        return NormBound(s, "exact (vector)", float(np.ldexp(scaled, exponent)))
    if _CERTIFY_MIN < min(m, n) <= _SVD_LIMIT:
        from lipgraph.norms.stack_sv import top_sv_stack  # (a late import: stack_sv imports lipgraph.norms)

        return NormBound(top_sv_stack(a[None]), "certified top singular value (Gram + Cholesky)", None)
    if min(m, n) <= _SVD_LIMIT:
        s = float(np.linalg.svd(a, compute_uv=False)[0])
        return NormBound(inflate(s, max(m, n)), "exact SVD", s)
    return gram_iteration(a)


def gram_iteration(a: np.ndarray, iterations: int = 10) -> NormBound:
    """Certified upper bound of ``||A||_2`` by Gram iteration with Frobenius rescaling.

    ``||G_t||_F^(1/2^t) >= sigma_1`` for every t (Delattre et al., ICML 2023). Each product
    ``G^T G`` is computed with error ``<= gamma_k ||G||_F^2`` (Higham), added before the
    square roots are unwound, as in the formally verified certifier (Tobler, Murray et al.).
    """
    g = np.asarray(a, dtype=np.float64)
    if g.shape[0] < g.shape[1]:
        g = g.T
    errs: list[float] = []
    scales: list[float] = []
    for _ in range(iterations):
        r = float(np.linalg.norm(g))
        if r == 0.0:
            return NormBound(0.0, "Gram iteration", 0.0)
        g = g / r
        k = g.shape[0]
        gamma = k * EPS64 / (1 - k * EPS64)
        g = g.T @ g
        scales.append(r)
        errs.append(gamma * (1 + 4 * EPS64) ** 2)
    # Unwind. With H = G/r exactly and H~ = fl(G/r): ||H~ - H||_2 <= u ||H||_F = u, and
    # sigma_1(H~)^2 <= sigma_1(fl(H~^T H~)) + e. So sigma_1(G) <= r (sqrt(next + e) + u).
    est = float(np.linalg.norm(g)) * (1 + 4 * EPS64)
    for r, e in zip(reversed(scales), reversed(errs), strict=True):
        root = np.nextafter(np.sqrt(np.nextafter(est + e, np.inf)), np.inf) + 2 * EPS64
        est = float(np.nextafter(root * r * (1 + 2 * EPS64), np.inf))
    return NormBound(float(est), f"Gram iteration (t={iterations})", None)


def power_iteration_lower(a: np.ndarray, steps: int = 30, seed: int = 0) -> float:
    """A lower estimate of ``||A||_2`` (never a bound): ``||A v|| / ||v||`` after a few steps."""
    rng = np.random.default_rng(seed)
    a = np.asarray(a, dtype=np.float64)
    v = rng.standard_normal(a.shape[1])
    est = 0.0
    for _ in range(steps):
        nv = np.linalg.norm(v)
        if nv == 0:
            return 0.0
        v = v / nv
        u = a @ v
        est = float(np.linalg.norm(u))
        v = a.T @ u
    return est


def row_norms_up(matrix: np.ndarray) -> np.ndarray:
    """Upper bounds of each row's Euclidean norm, whatever the entries' magnitude.

    Each row is scaled by a power of two near its largest entry (exact), so no square overflows and a square
    that underflows loses less than 2^-1022 (added per entry); the float64 squares, sums and square root are
    covered by gamma_{k+3} (k entries per row; Higham 2002, ch. 3). ``np.linalg.norm`` squares directly: rows of
    1e-170 entries came out 0. Non-finite rows give inf or NaN."""
    a = np.abs(np.asarray(matrix, dtype=np.float64))
    if a.ndim != 2:
        raise ValueError(f"row_norms_up expects a matrix, got shape {a.shape}")
    k = a.shape[1]
    if k == 0:
        return np.zeros(a.shape[0])
    top = a.max(axis=1)
    exponent = np.where(np.isfinite(top) & (top > 0), np.frexp(top)[1], 0)
    b = np.ldexp(a, -exponent[:, None])
    n = k + 3
    gamma = n * 2.0**-53 / (1.0 - n * 2.0**-53)
    root = np.sqrt((np.einsum("ij,ij->i", b, b) + k * 2.0**-1022) * (1.0 + gamma))
    out = np.ldexp(np.nextafter(root * (1.0 + 2.0**-52), np.inf), exponent)
    out = np.where(out < 2.0**-1021, np.nextafter(out, np.inf), out)  # back into subnormals: rounded to nearest
    return np.where(top == 0, 0.0, out)
