"""Certified upper bound of ``max_f sigma_1(A_f)`` over a stack of matrices (the per-frequency symbols of a conv).

The old path took every frequency's largest singular value from a full Hermitian eigensolve, whose
tridiagonalisation runs at matrix-vector (BLAS-2) speed. Certifying ``sigma_1(A_f)^2 <= mu`` only needs
``mu I - A_f^H A_f`` to be positive semidefinite, which a Cholesky factorisation (BLAS-3, a sixth of the
work of the eigensolve) decides, rounding included (Rump 2006, "Verification of positive definiteness";
Higham 2002, Thm 10.3). The frequencies share one trial value ``mu`` taken slightly above the largest
Lanczos estimate; the frequencies whose factorisation fails (their norm is above ``mu``) fall back to the
exact eigensolve. So the result is within a factor ``sqrt(1 + tol)`` of the exact maximum whenever the
Lanczos estimate of the top frequency is accurate, and exact (up to rounding allowances) otherwise.
Soundness never depends on the estimate: it only decides how much work the fallback does.

Also here: :func:`gram_iteration_stack`, the batched Gram iteration of Delattre et al. (ICML 2023), a
certified upper bound at every iteration, used where only a quick bound is wanted.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.norms import EPS64, discarded, inflate
from lipgraph.norms.lapack import cholesky_inplace

# Matrices whose smaller side is below this size: a batched SVD is cheap and exact.
SVD_MAX_SIDE = 24
# Relative slack of the trial value above the Lanczos estimate of the largest eigenvalue of the Gram
# matrices (on sigma_1 that is about tol / 2): the price of certifying by factorisation.
CHOLESKY_TOL = 1e-4
LANCZOS_STEPS = 30
# Lanczos runs stop early once their top Ritz values change by less than this (relative) between checks
# every LANCZOS_CHECK steps: the trial value then moves by about as much, far below CHOLESKY_TOL.
LANCZOS_RTOL = 1e-12
LANCZOS_CHECK = 5
# Underflow allowance per matrix entry (gradual underflow adds absolute errors of this order).
_TINY = 1e-290


def _gamma(k: int, complex_: bool) -> float:
    """``gamma_k = k u / (1 - k u)`` with k quadrupled for complex arithmetic (Higham 2002, sec. 3.6)."""
    kk = 4 * (k + 4) if complex_ else k + 1
    return kk * EPS64 / (1.0 - kk * EPS64)


def _up(x: float) -> float:
    """Round a nonnegative float64 quantity one step up, after a few ulps of slack."""
    return float(np.nextafter(x * (1 + 4 * EPS64), np.inf))


def gram_stack(mats: np.ndarray) -> tuple[np.ndarray, float]:
    """Gram matrices of the smaller side and an additive allowance: ``(G, err)``.

    ``G[f]`` is fl(A A^H) or fl(A^H A), whichever is smaller, and ``||G[f] - exact Gram||_2 <= err`` for
    every f. Real matrices: one symmetric rank-k product per matrix (BLAS syrk). Complex ``A = X + iY``:
    ``Re = [X Y][X Y]^T`` (syrk, inner length 2n) and ``Im = M - M^T`` with ``M = Y X^T`` (one real
    product), half the flops of a complex product. Every real entry errs by at most
    ``gamma_{2n+1} (|A| |A|^H)_ij`` (Higham 2002, sec. 3.5; ``|x_ik x_jk| + |y_ik y_jk|`` and
    ``|y_ik x_jk| + |x_ik y_jk|`` are both at most ``|a_ik| |a_jk|``), so the complex entry by
    ``sqrt(2)`` times that, and ``|| |A| |A|^H ||_2 <= ||A||_F^2``.
    """
    f, m, n = mats.shape
    is_complex = np.iscomplexobj(mats)
    if m > n:  # work on the side with fewer rows: A^H A has the spectrum of B B^H for B = A^H
        mats = np.conj(np.swapaxes(mats, 1, 2))
        m, n = n, m
    gram = np.empty((f, m, m), dtype=np.complex128 if is_complex else np.float64)
    for i in range(f):  # 2-D products: numpy hands ``x @ x.T`` to syrk (a batched matmul would not)
        if is_complex:
            x = np.concatenate([mats[i].real, mats[i].imag], axis=1)
            cross = mats[i].imag @ mats[i].real.T
            gram[i].real = x @ x.T
            gram[i].imag = cross - cross.T
        else:
            x = np.ascontiguousarray(mats[i])
            gram[i] = x @ x.T
    fro2 = float((mats.real**2 + mats.imag**2).sum(axis=(1, 2)).max()) if f else 0.0
    fro2 = _up(fro2 * (1 + (m * n + 2) * EPS64))
    coeff = 1.5 * _gamma(2 * n + 2, False) if is_complex else _gamma(n, False)
    err = _up(coeff * fro2 + m * m * _TINY)
    return gram, err


def _real_view(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` as real vectors (a complex row of length k: 2k reals), without a copy."""
    return a.view(a.real.dtype) if np.iscomplexobj(a) else a


def _tridiagonal_top(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of each real symmetric tridiagonal matrix (diagonals ``alphas``, off ``betas[:, :-1]``)."""
    f, j = alphas.shape
    tri = np.zeros((f, j, j))
    idx = np.arange(j)
    tri[:, idx, idx] = alphas
    tri[:, idx[:-1], idx[1:]] = betas[:, : j - 1]
    tri[:, idx[1:], idx[:-1]] = betas[:, : j - 1]
    return np.linalg.eigvalsh(tri)[:, -1]


def lanczos_top(full: np.ndarray, steps: int = LANCZOS_STEPS, seed: int = 0) -> np.ndarray:
    """Estimates (NOT bounds) of the largest eigenvalue of each Hermitian matrix: batched Lanczos.

    Plain three-term recurrence without reorthogonalisation: the largest Ritz value converges first
    and is all that is used (to pick the trial value of the certificate). Every :data:`LANCZOS_CHECK`
    steps the top Ritz values are computed; once none of them moved by more than :data:`LANCZOS_RTOL`
    relatively since the last check, the run stops (measured on a CIFAR ResNet-18: most of its 60 runs
    stop at step 10-20 of 30, with trial values equal to 1e-13 relatively). Per step: one batched
    product and in-place updates; the inner products of complex rows are real dot products of their
    real views (``Re(v^H w) = v_re . w_re + v_im . w_im``), one ``einsum`` each.
    """
    f, k, _ = full.shape
    steps = max(1, min(steps, k))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((f, k)).astype(full.dtype)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v_prev = np.zeros_like(v)
    beta = np.zeros(f, dtype=np.zeros(0, dtype=full.dtype).real.dtype)  # the matrices' precision
    alphas = np.zeros((f, steps))
    betas = np.zeros((f, steps))
    last: np.ndarray | None = None
    for j in range(steps):
        w = np.matmul(full, v[:, :, None])[:, :, 0]
        alpha = np.einsum("ij,ij->i", _real_view(v), _real_view(w))
        w -= alpha[:, None] * v
        w -= beta[:, None] * v_prev
        wr = _real_view(w)
        beta = np.sqrt(np.einsum("ij,ij->i", wr, wr))
        alphas[:, j] = alpha
        betas[:, j] = beta
        ok = beta > 1e-12 * (np.abs(alpha) + 1e-300)
        v_prev = v
        if ok.all():
            w /= beta[:, None]
            v = w
        else:  # an invariant subspace was found: its Ritz values are exact; stop that recurrence
            v = np.where(ok[:, None], w / np.where(ok, beta, 1.0)[:, None], 0.0)
            beta = np.where(ok, beta, 0.0)
        if (j + 1) % LANCZOS_CHECK == 0 and j + 1 < steps:
            top = _tridiagonal_top(alphas[:, : j + 1], betas[:, : j + 1])
            if last is not None and bool(np.all(np.abs(top - last) <= LANCZOS_RTOL * np.abs(top))):
                return top
            last = top
    return _tridiagonal_top(alphas, betas)


def _estimate_top(gram: np.ndarray, candidates: int = 4) -> np.ndarray:
    """Lanczos estimates of lambda_max for the few matrices most likely to hold the maximum.

    Every matrix gets three power steps (a rough lower estimate); the ``candidates`` highest then get
    the full Lanczos run. If the true maximum is elsewhere, its Cholesky certificate fails and the exact
    fallback handles it: the choice affects speed only (measured: 4 candidates instead of 16 cut the
    Lanczos time of a ResNet by 3x, with the same trial values).
    """
    f, k, _ = gram.shape
    if f <= candidates:
        return lanczos_top(gram)
    v = np.random.default_rng(1).standard_normal((f, k, 1)).astype(gram.dtype)
    rough = np.zeros(f)
    for _ in range(3):
        w = np.matmul(gram, v)
        rough = np.linalg.norm(w[:, :, 0], axis=1) / np.linalg.norm(v[:, :, 0], axis=1)
        v = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-300)
    top = np.argsort(rough)[-candidates:]
    return lanczos_top(gram[top])


def cholesky_certifies(gram_upper: np.ndarray, mu: float) -> tuple[bool, float]:
    """Try to certify ``lambda_max(G) <= mu + slack`` for one Hermitian G (as defined by the triangle read).

    ``H = fl(mu I - G)`` differs from ``mu I - G`` only on the diagonal, by at most
    ``u max_i |mu - g_ii|``. If the Cholesky factorisation of H completes, ``R^H R = H + dH`` with
    ``|dH| <= gamma_{k+1} |R^H| |R|`` (Higham 2002, Thm 10.3), so ``||dH||_2 <= gamma sum_i ||r_i||^2
    <= gamma / (1 - gamma) tr(H)`` and ``lambda_min(H) >= -||dH||_2`` (Rump 2006). Returns (success,
    slack) with ``lambda_max(G) <= mu + slack`` on success.
    """
    k = gram_upper.shape[0]
    is_complex = np.iscomplexobj(gram_upper)
    h = -gram_upper  # a copy; LAPACK (numpy's cholesky: potrf) reads its lower triangle only
    diag = mu - np.real(np.diagonal(gram_upper))
    np.fill_diagonal(h, diag)
    try:
        factor = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return False, math.inf
    if not np.all(np.isfinite(np.diagonal(factor))):  # OpenBLAS's potrf lets NaN pivots through (info 0)
        return False, math.inf
    gamma = _gamma(k + 1, is_complex)
    trace = _up(float(np.sum(np.abs(diag))) * (1 + (k + 1) * EPS64))
    slack = gamma / (1.0 - gamma) * trace + EPS64 * float(np.max(np.abs(diag), initial=0.0)) + k * k * _TINY
    return True, _up(slack)


def _cholesky_stack(gram: np.ndarray, idx: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cholesky_certifies` for the matrices ``gram[idx]``, its set-up and slack vectorised.

    Returns (passed mask, slack per matrix; inf where the factorisation failed). One LAPACK ``potrf`` per
    matrix, in place on a C-ordered copy, reading the lower triangle of H (:mod:`lipgraph.norms.lapack`:
    numpy's own OpenBLAS, without importing scipy.linalg; a NaN pivot counts as failed). Measured
    1.5x-2.5x faster than numpy's ``cholesky`` (which copies each matrix and allocates its factor), and
    2x-5x faster than numpy's batched one; a failure names its matrix.
    """
    k = gram.shape[1]
    is_complex = np.iscomplexobj(gram)
    # A copy (one pass when every matrix is asked for), factorised in place.
    if len(idx) == gram.shape[0]:
        h = np.negative(gram)
    else:  # the indexed copy, negated in place (not a second stack)
        h = gram[idx]
        np.negative(h, out=h)
    d = np.arange(k)
    diag = mu + np.real(h[:, d, d])  # mu - g_ii (the negation above is exact)
    h[:, d, d] = diag
    ok = cholesky_inplace(h)  # False: a leading minor is not positive, or a pivot NaN: not certified
    gamma = _gamma(k + 1, is_complex)
    absd = np.abs(diag)
    trace = absd.sum(axis=1) * (1 + (k + 1) * EPS64) * (1 + 4 * EPS64)
    slack = gamma / (1.0 - gamma) * trace + EPS64 * absd.max(axis=1, initial=0.0) + k * k * _TINY
    slack = np.nextafter(slack * (1 + 4 * EPS64), np.inf)
    return ok, np.where(ok, slack, np.inf)


def _exact_top_eig(gram_upper: np.ndarray, err: float) -> float:
    """Bound of lambda_max(G) from LAPACK's backward-stable Hermitian eigensolver.

    ``|lam_hat - lam| <= p eps ||G||_2`` (the SVD allowance of :func:`inflate`); G is within ``err`` of
    a positive semidefinite matrix, so ``||G||_2 <= max(lam_max, err)``.
    """
    lam = float(np.linalg.eigvalsh(gram_upper, UPLO="U")[-1])
    return inflate(max(lam, err), gram_upper.shape[0])


def top_sv_stack(mats: np.ndarray, tol: float = CHOLESKY_TOL, floor: float = 0.0) -> float:
    """Sound upper bound of ``max_f sigma_1(mats[f])`` (exact arithmetic on the given float64 matrices).

    Small matrices: batched SVD plus the SVD allowance. Otherwise the Gram + Lanczos + Cholesky
    certificate described in the module docstring, with the exact eigensolve as the fallback for the
    frequencies the certificate rejects. Tightness: at most ``sqrt(1 + tol)`` (plus rounding
    allowances of order ``k^2 u``) above the exact maximum. ``floor``: a singular value bound already
    proven for other matrices of the same operator, tried first as the trial value (see
    :func:`certify_gram_stack`); the result is then a bound of the max over both.
    """
    f, m, n = mats.shape
    if discarded():  # the caller throws the value away (see lipgraph.norms.values_discarded)
        return 1.0
    if f == 0 or m == 0 or n == 0:
        return 0.0
    if min(m, n) == 1:
        s = float(np.sqrt((np.abs(mats) ** 2).sum(axis=(1, 2))).max())
        return inflate(s, max(m, n))
    if min(m, n) <= SVD_MAX_SIDE:
        s = float(np.linalg.svd(mats, compute_uv=False)[:, 0].max())
        return inflate(s, max(m, n))
    gram, err = gram_stack(mats)
    return _sqrt_up(certify_gram_stack(gram, err, tol, floor * floor))


def _sqrt_up(sq: float) -> float:
    return float(np.nextafter(math.sqrt(sq) * (1 + 2 * EPS64), np.inf))


def _trial_value(gram: np.ndarray, tol: float) -> float:
    """A shared trial value slightly above the largest Lanczos estimate (a guess: soundness never rests on it)."""
    mu = float(_estimate_top(gram).max()) * (1.0 + tol)
    if not (mu > 0.0 and math.isfinite(mu)):
        mu = float(np.abs(gram).max()) * gram.shape[1]  # a zero or degenerate stack
    return mu


def certify_gram_stack(gram: np.ndarray, err: float, tol: float = CHOLESKY_TOL, floor: float = 0.0) -> float:
    """Sound upper bound of ``max_f lambda_max(exact Gram_f)`` given computed Hermitian ``gram`` within ``err``.

    Each matrix is certified by a Cholesky factorisation against a shared trial value; those the
    certificate rejects get the exact eigensolve. ``floor`` (a bound already proven for other
    frequencies of the same operator, or 0) is tried first as the trial value: frequencies below it cost
    one factorisation and no Lanczos run, and only the rejected ones pick a new trial value.
    """
    f = gram.shape[0]
    if f == 0:
        return 0.0
    todo = np.arange(f)
    best = 0.0
    mu = floor if floor > 0.0 and math.isfinite(floor) else _trial_value(gram, tol)
    for attempt in range(2):
        ok, slack = _cholesky_stack(gram, todo, mu)
        if ok.any():
            best = max(best, _up(mu + float(slack[ok].max())))
        todo = todo[~ok]
        if todo.size == 0 or attempt == 1:
            break
        new_mu = _trial_value(gram[todo], tol)
        if new_mu <= mu:  # the estimate sees nothing above the trial value: the eigensolve decides
            break
        mu = new_mu
    for i in todo:  # frequencies above the trial value get the exact eigensolve
        best = max(best, _exact_top_eig(gram[i], err))
    return _up(best + err)


def gram_iteration_stack(mats: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Per-matrix certified upper bounds of sigma_1 by Gram iteration (Delattre et al., ICML 2023).

    ``sigma_1(A) <= ||G_t||_F^(1/2^t)`` with ``G_0 = A`` and ``G_{t+1} = G_t^H G_t`` for every t; each
    step is rescaled by its Frobenius norm and its matrix product's rounding (at most
    ``gamma ||G||_F^2`` in 2-norm, Higham) is added back while the square roots are unwound, as in
    :func:`lipgraph.norms.dense.gram_iteration`. Tightens towards sigma_1 as ``t`` grows (ratio at most
    ``rank^(1/2^(t+1))``).
    """
    g = np.asarray(mats)
    if g.shape[1] < g.shape[2]:
        g = np.conj(np.swapaxes(g, 1, 2))
    is_complex = np.iscomplexobj(g)
    scales, errs = [], []
    for _ in range(iterations):
        r = np.sqrt((g.real**2 + g.imag**2).sum(axis=(1, 2)))
        r = np.where(r == 0.0, 1.0, r)
        g = g / r[:, None, None]
        gamma = _gamma(g.shape[1], is_complex)
        g = np.matmul(np.conj(np.swapaxes(g, 1, 2)), g)
        scales.append(r)
        errs.append(gamma * (1 + 4 * EPS64) ** 2)
    est = np.sqrt((g.real**2 + g.imag**2).sum(axis=(1, 2))) * (1 + (g.shape[1] ** 2 + 4) * EPS64)
    for r, e in zip(reversed(scales), reversed(errs), strict=True):
        # With H = G / r exactly and its rounded copy within u ||H||_F = u: sigma_1(G) <= r (sqrt(next + e) + 2u).
        root = np.nextafter(np.sqrt(np.nextafter(est + e, np.inf)), np.inf) + 2 * EPS64
        est = np.nextafter(root * r * (1 + 2 * EPS64), np.inf)
    return est


def top_sv_stack_eig(mats: np.ndarray) -> float:
    """The previous method, kept as the reference of the benchmarks and tests: an SVD (below 96
    channels) or a Hermitian eigensolve of the complex Gram matrix at every frequency."""
    f, m, n = mats.shape
    if f == 0 or m == 0 or n == 0:
        return 0.0
    if min(m, n) < 96:
        s = float(np.linalg.svd(mats, compute_uv=False)[:, 0].max())
        return inflate(s, max(m, n))
    if m <= n:
        gram, inner, size = mats @ np.conj(np.swapaxes(mats, -1, -2)), n, m
    else:
        gram, inner, size = np.conj(np.swapaxes(mats, -1, -2)) @ mats, m, n
    fro2 = _up(float((np.abs(mats) ** 2).sum(axis=(1, 2)).max()) * (1 + 4 * inner * EPS64))
    err = _up(_gamma(inner, True) * fro2)
    lam = float(np.linalg.eigvalsh(gram)[:, -1].max())
    sq = _up(inflate(max(lam, err), size) + err)
    return float(np.nextafter(math.sqrt(sq) * (1 + 2 * EPS64), np.inf))
