"""Float32 certificates that a Hermitian Gram matrix stays below a given value, with rigorous allowances.

Used by :mod:`lipgraph.norms.conv_tiers` for the frequencies of a conv that are clearly below the layer's
maximum: those only need ``lambda_max(A A^H) <= target``, and single precision (measured on one core:
products 1.5-1.9x, factorisations 1.1-1.6x the speed of double) proves it whenever the frequency lies
below the target by more than the float32 allowances (about 5e-3 relative on a 512-channel layer). The
frequencies near the maximum keep the float64 certificate of :mod:`lipgraph.norms.stack_sv`, so the
bound itself is as tight as before.

The allowances (unit roundoff ``u = 2^-24``; ``gamma_k = k u / (1 - k u)``; Higham, *Accuracy and
Stability of Numerical Algorithms*, 2002, sec. 3.1, 3.5-3.6 and Thm 10.3):

* Gram product of float64 matrices ``A = X + iY`` rounded to float32: each real entry of the computed
  ``A A^H`` errs by at most ``gamma_{depth+3} (|A| |A|^H)_ij`` (the inner sums, cut into blocks so that a
  term goes through at most ``depth = block + blocks`` additions (:func:`blocked_product32`), the
  rounding of the operands to float32 and the subtraction forming the imaginary part), so the spectral
  error is at most ``sqrt(2) gamma_{depth+3} rho(|A| |A|^H)``, and ``rho(|A| |A|^H) <= min(||A||_F^2,
  max_i (|A| |A|^T 1)_i)`` (the second: Collatz-Wielandt with the all-ones vector).
* Cholesky factorisation of ``H = fl(mu I - G)`` in complex float32: when it completes,
  ``R^H R = H + dH`` with ``|dH| <= gamma_c |R^H| |R|`` (Higham 2002, Thm 10.3; ``gamma_c`` with the
  complex-arithmetic constant of :func:`lipgraph.norms.stack_sv._gamma`), hence
  ``||dH||_2 <= gamma_c rho(|R|^T |R|)``, which is bounded a posteriori by the Collatz-Wielandt ratio
  ``max_i (|R|^T |R| x)_i / x_i`` for a positive vector ``x`` (a few power steps choose it). This is
  far below Rump's trace bound (Rump 2006, "Verification of positive definiteness") in float32: about
  ``0.5 sqrt(k)`` times ``mu`` instead of ``k`` times ``mu``.
* The diagonal ``mu - g_ii`` rounded to float32: at most ``u max_i |mu - g_ii|`` in the 2-norm.

Together: ``lambda_max(exact Gram) <= mu + u max|mu - g_ii| + gamma_c rho + err_gram``. The trial value
``mu`` is the target minus an a-priori estimate of these terms; a frequency whose a-posteriori sum
does not come back below the target is not certified here (the caller falls back to float64).
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.norms.lapack import cholesky_inplace

U32 = float(2.0**-24)  # unit roundoff of float32
# A-priori estimate of rho(|R|^T |R|) / mu for the float32 Cholesky factor of mu I - G (k x k): measured
# 0.45 sqrt(k) to 0.5 sqrt(k) on ResNet layers (k = 64 ... 512); sqrt(k) is assumed, so the shift rarely
# falls short of the a-posteriori value (when it does, that frequency goes to float64: never unsound).
_RHO_PER_SQRT_K = 1.0
_POWER_STEPS = 3
# Targets outside this range are left to float64 (float32 overflow and underflow stay far away inside it).
_MIN_TARGET, _MAX_TARGET = 2.0**-60, 2.0**60


def gamma32(k: int, complex_: bool = False) -> float:
    """``gamma_k`` in float32, with the complex constant of :func:`lipgraph.norms.stack_sv._gamma`."""
    kk = 4 * (k + 4) if complex_ else k + 1
    return kk * U32 / (1.0 - kk * U32)


def _up(x: np.ndarray | float, rel: float = 8e-16) -> np.ndarray:
    """Nonnegative float64 values rounded up after a relative slack of a few float64 ulps."""
    return np.nextafter(np.asarray(x, dtype=np.float64) * (1.0 + rel), np.inf)


def abs_gram_bound(re: np.ndarray, im: np.ndarray) -> float:
    """An upper bound of ``rho(|A| |A|^T)`` for ``A = re + i im`` (the componentwise Gram error's factor).

    The smaller of ``||A||_F^2`` and ``max_i (|A| (|A|^T 1))_i`` (Collatz-Wielandt with the ones vector);
    evaluated in float64 on nonnegative terms, so a relative ``gamma`` (float64) of each sum's number of
    terms covers it, with a factor 4 to spare: ``m n + 8`` for the Frobenius norm (``m n`` squares),
    ``m + n + 8`` for the row sums.
    """
    return _abs_gram_bound(re, im, np.empty(re.shape))[0]


def _abs_gram_bound(re: np.ndarray, im: np.ndarray, mod: np.ndarray) -> tuple[float, float]:
    """:func:`abs_gram_bound` and an upper bound of ``max(|re|, |im|)`` (entrywise), with the moduli formed in
    the caller's scratch array ``mod`` (same shape; no temporaries: gram32 calls this once per frequency).

    The second value is the largest computed modulus times ``1 + 1e-15`` (each modulus is at least the larger
    of ``|re_ij|, |im_ij|`` up to its three roundings, ``2.5u``), plus ``1e-150`` for entries whose squares
    underflow (their moduli may come out below them, even zero)."""
    m, n = re.shape
    np.multiply(re, re, out=mod)
    mod += np.square(im)
    np.sqrt(mod, out=mod)  # float64 moduli (a few ulps: in the slack below)
    fro2 = float(_up(float(np.vdot(mod, mod)), (m * n + 8) * 2.0**-53 * 4))
    rows = float(_up(float((mod @ mod.sum(axis=0)).max()), (m + n + 8) * 2.0**-53 * 4))
    return min(fro2, rows), float(mod.max(initial=0.0)) * (1.0 + 1e-15) + 1e-150


# Inner length of each float32 product: longer inner dimensions are split into blocks of this length whose
# products are added up afterwards, so every entry's rounding is that of a sum of depth ``block + blocks``
# instead of ``n`` (Higham 2002, sec. 3.1: the error of a sum is governed by the additions each term goes
# through, in any order inside a block): a 512-channel layer's Gram allowance drops about fourfold (blocks
# of 128: sevenfold, but the products of short inner length run 25% slower).
INNER_BLOCK = 256


def blocked_product32(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``a b^T`` (``a a^T`` when b is None, by the symmetric BLAS product) in float32, inner dimension in
    blocks of :data:`INNER_BLOCK`; returns (product, depth) with every entry within
    ``gamma_depth sum_k |a_ik b_jk|`` of the exact product of the float32 operands."""
    n = a.shape[1]
    acc: np.ndarray | None = None
    for j in range(0, max(n, 1), INNER_BLOCK):
        x = a[:, j : j + INNER_BLOCK]
        part = x @ (x.T if b is None else b[:, j : j + INNER_BLOCK].T)  # a fresh product per block
        if acc is None:
            acc = part
        else:
            acc += part
    assert acc is not None
    blocks = -(-n // INNER_BLOCK)
    return acc, min(n, INNER_BLOCK) + blocks


def gram32(re: np.ndarray, im: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float32 Gram matrices of the smaller side of the float64 matrices ``re + i im`` and their
    allowances: ``(G, err)``.

    ``G[f]`` (complex64, exactly Hermitian) is within ``err[f]`` (2-norm) of the exact Gram of matrix f.
    Real-split products as in :func:`lipgraph.norms.stack_sv.gram_stack` (``Re = [X Y][X Y]^T``, one
    symmetric product; ``Im = M - M^T``, ``M = Y X^T``), in single precision with blocked inner sums.
    Per real entry: the operands' rounding to float32 (``gamma_2``), the blocked sum (``gamma_depth``) and
    the subtraction of the imaginary part (``u``). For the other side, ``A^H = re^T - i im^T``.
    """
    f, m, n = re.shape
    side = m > n
    if side:
        m, n = n, m
    gram = np.empty((f, m, m), dtype=np.complex64)
    split = np.empty((m, 2 * n), dtype=np.float32)
    bound = np.empty(f)
    amax = np.empty(f)
    depth = 0
    mod = np.empty((m, n))  # scratch for the moduli, reused at every frequency
    for i in range(f):
        x, y = (re[i].T, -im[i].T) if side else (re[i], im[i])
        split[:, :n] = x
        split[:, n:] = y
        sym, d_re = blocked_product32(split)  # symmetric product (syrk): both triangles the same numbers
        cross, d_im = blocked_product32(split[:, n:], split[:, :n])
        gram[i].real = sym
        np.subtract(cross, cross.T, out=gram[i].imag)  # exactly skew: fl(a - b) = -fl(b - a)
        depth = max(d_re, d_im + 1)
        bound[i], amax[i] = _abs_gram_bound(x, y, mod)
    err = math.sqrt(2.0) * gamma32(depth + 2) * bound
    # Underflow: a rounding below float32's normal range errs by at most 2^-150 absolutely, and under a
    # flush-to-zero / denormals-are-zero mode (set process-wide by some libraries) by up to 2^-126 per
    # operation and per operand (the float64 -> float32 conversion included). An entry goes through at most
    # 4n + depth + 4 operations; an operand's error reaches it times the other operand (at most max|a|),
    # and later roundings scale earlier errors by at most 1 + gamma <= 2: per entry
    # 2^-125 (4n + depth + 4) (3 + 2 max|a|), m times that in the 2-norm (||E||_2 <= m max|e_ij|).
    err = err + math.sqrt(2.0) * m * (4 * n + depth + 4) * 2.0**-125 * (3.0 + 2.0 * amax)
    return gram, _up(err)


def _collatz_rho(factor: np.ndarray, sel: np.ndarray | None = None) -> np.ndarray:
    """Upper bounds of ``rho(|R|^T |R|)`` for a stack of complex64 matrices R (Collatz-Wielandt).

    ``sel`` (a boolean mask or indices) picks the matrices of ``factor`` to bound (all when None): their
    moduli are formed one matrix at a time, with no copy of the complex stack (with the single copy of
    :func:`_factor32`, a CIFAR ResNet-18's peak working set drops from 391 to 343 MiB: fewer pages faulted in).

    For any positive x, ``rho(M) <= max_i (M x)_i / x_i`` when M >= 0 (``rho(M) = rho(D^-1 M D) <=
    ||D^-1 M D||_inf`` with ``D = diag(x)``). A few power steps choose x; every entry is kept at least
    1e-3 of the largest so that x stays positive. The moduli are numpy's complex ``absolute``: either libm's
    ``hypotf`` (within 1 ulp, ``2u`` relatively) or numpy's SIMD loop ``l sqrt(1 + (s/l)^2)`` with
    ``l, s`` the larger and smaller of ``|re|, |im|`` (five roundings: the ratio and its square perturb
    ``1 + r^2`` by at most ``(3u + O(u^2)) r^2 / (1 + r^2) <= 1.5u``, the sum ``u``, the square root halves
    both, the root and the product ``u`` each: ``3.25u + O(u^2)``); neither squares the parts, so nothing
    underflows but a ratio below ``2^-126`` (its square is far below ``u`` beside 1) or a modulus below
    ``2^-126`` (denormals read as zero or flushed: at most ``sqrt(2) 2^-126 < 1e-18`` absolutely). So
    ``|r_ij| <= b_ij (1 + 4u) + 1e-18``. The two float32 products of nonnegative terms are covered by a
    relative ``gamma_{2k+8}``, and their underflow (at most ``2^-126`` per operation and operand,
    flush-to-zero included; at most ``3k`` operations per entry of each product, entries of ``x`` in
    ``[1e-3, 1]``) by an absolute term on the ratio: ``1e3 * 12 k 2^-126 (1 + k bmax)^2``. Non-finite
    entries give ``inf``.
    """
    f_all, k, _ = factor.shape
    idx = np.arange(f_all) if sel is None else np.arange(f_all)[sel]
    f = idx.size
    b = np.empty((f, k, k), dtype=np.float32)
    for j, i in enumerate(idx):
        np.abs(factor[i], out=b[j])  # float32 moduli
    x = np.ones((f, k, 1), dtype=np.float32)
    bt = np.swapaxes(b, 1, 2)
    for _ in range(_POWER_STEPS):
        y = np.matmul(bt, np.matmul(b, x))
        top = np.maximum(y.max(axis=1, keepdims=True), np.float32(1e-30))
        x = np.maximum(y / top, np.float32(1e-3))
    y = np.matmul(bt, np.matmul(b, x))
    ratio = (y[:, :, 0].astype(np.float64) / x[:, :, 0].astype(np.float64)).max(axis=1)
    ratio = np.where(np.isfinite(ratio), ratio, np.inf)
    ratio = ratio * (1.0 + 4.0 * U32) ** 2 / (1.0 - gamma32(2 * k + 8))
    bmax = b.reshape(f, -1).max(axis=1, initial=0.0).astype(np.float64) * (1.0 + 4.0 * U32) + 1e-18
    ratio = ratio + 1e3 * 12.0 * k * 2.0**-126 * (1.0 + k * bmax) ** 2  # underflow (flush-to-zero too)
    # ||B_true|| <= ||(1 + 4u) B + 1e-18 J|| <= sqrt(rho) + 1e-18 k (J: all ones; the underflow allowance)
    out = _up((np.sqrt(ratio) * (1 + 1e-15) + 1e-18 * k) ** 2, 1e-15)
    # A NaN modulus reaches bmax (NaN) after the ratio was checked: inf, as promised, not NaN.
    return np.where(np.isfinite(out), out, np.inf)


def chol32_estimate(k: int) -> float:
    """A-priori estimate (not a bound) of the float32 Cholesky allowance of a k x k matrix, relative to mu."""
    return gamma32(k + 1, complex_=True) * _RHO_PER_SQRT_K * math.sqrt(k) + 2.0 * U32


def cholesky32_below(
    gram: np.ndarray, err: np.ndarray, target: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Certify ``lambda_max(exact Gram_f) <= target`` for each float32 Gram ``gram[f]`` within ``err[f]``.

    The trial value is ``mu_f = target - err[f] - a priori estimate of the rounding terms``, rounded down
    to float32 (:func:`_factor32` proves the bound). ``rows`` (indices): only the matrices ``gram[rows]``,
    whose allowances ``err`` lists in that order (the stack is not copied for them: :func:`_factor32`
    copies once). Returns (certified mask, the bound proven for each matrix, ``inf`` where the
    factorisation failed): ``bound <= target`` where certified.
    """
    k = gram.shape[1]
    f = gram.shape[0] if rows is None else len(rows)
    if not (_MIN_TARGET <= target <= _MAX_TARGET) or not np.all(np.isfinite(err)):
        return np.zeros(f, dtype=bool), np.full(f, np.inf)  # outside float32's safe range: float64 decides
    est = chol32_estimate(k) * target
    mu = (target - np.asarray(err, dtype=np.float64) - est).astype(np.float32)
    mu = np.nextafter(mu, np.float32(-np.inf))  # below the float64 value (the float32 value is the one used)
    _, bound = _factor32(gram, np.asarray(err, dtype=np.float64), mu, target, rows)
    return bound <= target, bound


def _factor32(
    gram: np.ndarray, err: np.ndarray, mu: np.ndarray, scale: float, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per matrix: factorise ``H = fl32(mu_f I - G_f)`` and, where it completes, bound ``lambda_max(exact)``.

    ``rows``: the matrices ``gram[rows]`` only (``err`` and ``mu`` in that order); None: every one.

    LAPACK ``cpotrf`` works in place on one triangle: the lower one of G (the upper of the transposed view).
    gram32's G is exactly Hermitian; the autocorrelation tier's is not (its DFT sums the two triangles in
    different orders), but its allowance holds entrywise, so ``err`` covers the Hermitian completion of the
    triangle read. An entry of the other triangle is never read, NaN or not.

    The bound is ``mu + u max|mu - g_ii| + gamma_c rho(|R|^T |R|) + err + underflow``
    (module docstring); ``scale`` (the size of the entries, about ``mu``) sizes the underflow term.
    Returns (factorisation completed, bound; ``inf`` where it did not).
    """
    k = gram.shape[1]
    f = gram.shape[0] if rows is None else len(rows)
    bound = np.full(f, np.inf)
    live = np.flatnonzero(mu > 0)
    if live.size == 0:
        return np.zeros(f, dtype=bool), bound
    # The one copy, factorised in place (negated in place: a second stack would be faulted in too).
    if rows is None and live.size == f:
        h = np.negative(gram)
    else:
        h = gram[live if rows is None else np.asarray(rows)[live]]
        np.negative(h, out=h)
    d = np.arange(k)
    diag = mu[live][:, None] + h[:, d, d].real  # mu - g_ii, rounded to float32
    h[:, d, d] = diag
    ok = cholesky_inplace(h, clean=True)  # finite positive pivots only (a NaN pivot fails)
    if ok.any():
        rho = _collatz_rho(h, None if ok.all() else ok)  # the factors (one triangle; clean=1 zeroed the other)
        diag_err = U32 * np.abs(diag[ok]).max(axis=1).astype(np.float64) / (1.0 - U32)
        # Underflow: at most 2^-126 per operation and operand (gradual underflow: 2^-150; a flush-to-zero /
        # denormals-are-zero mode: 2^-126), at most 4 (k + 4) real operations per entry of R^H R, each error
        # scaled by at most 2 (later roundings) times an operand or a pivot, |r_ij|, r_jj <= 1 + h_jj
        # (as r_jj^2 + sum_i |r_ij|^2 = h_jj up to rounding): per entry 2^-123 (k + 4) (1 + max h_jj); twice
        # that, k times, in the 2-norm. ``scale`` (about the entries' size) keeps the term from vanishing.
        hmax = np.abs(diag[ok]).max(axis=1).astype(np.float64)
        under = k * 8.0 * (k + 4) * 2.0**-126 * (2.0 + 2.0 * np.maximum(hmax, scale))
        gam = gamma32(k + 1, complex_=True)
        total = mu[live][ok].astype(np.float64) + diag_err + gam * rho + err[live][ok] + under
        bound[live[ok]] = _up(total, 1e-15)
    done = np.zeros(f, dtype=bool)
    done[live[ok]] = True
    return done, bound
