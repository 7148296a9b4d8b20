"""Bounds for polynomials of one operator: ``||p(A)||`` for ``p(z) = sum_i a_i z^i``.

Used by the rule of the fused ``PowerSeries`` node (skew orthogonal convolutions). The facts:

* Skew-adjoint S (``S^T = -S``) is normal with spectrum on the imaginary axis, inside
  ``[-i||S||, i||S||]``; p(S) is normal too, so ``||p(S)|| = max over the eigenvalues i theta of
  |p(i theta)| <= max_{|theta| <= rho} |p(i theta)|`` for any ``rho >= ||S||``.
* ``||(S + N)^i - S^i|| <= (||S|| + ||N||)^i - ||S||^i`` (expand the product, bound each word), so
  ``||p(S + N)|| <= ||p(S)|| + sum_i |a_i| ((rho + delta)^i - rho^i)`` for ``delta >= ||N||``.
* The skew part of a real square matrix, ``fl(A - A^T) / 2``, is exactly skew in floating point
  (``fl(a - b) = -fl(b - a)``); the remainder ``N = A - S`` is formed with an explicit rounding term.

Every function returns a value rounded up (exact rational arithmetic where sums could cancel).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from lipgraph.norms import EPS64

_GRID = 1 << 16  # points per interval in the max of |p(i theta)|^2 (a power of two: exact spacing)


def _up(x: Fraction | float) -> float:
    """The smallest float >= x (for a Fraction: its nearest float, nudged up)."""
    f = float(x)
    return f if Fraction(f) >= Fraction(x) else float(np.nextafter(f, np.inf))


def abs_series(coefs: list[Fraction], r: float) -> float:
    """``sum_i |a_i| r^i`` rounded up (the bound of composing the ops one by one)."""
    if not math.isfinite(r):
        return math.inf
    rf = Fraction(r)
    return _up(sum((abs(a) * rf**i for i, a in enumerate(coefs)), Fraction(0)))


def perturbation(coefs: list[Fraction], rho: float, delta: float) -> float:
    """``sum_{i>=1} |a_i| ((rho + delta)^i - rho^i)``: how far ``p(S + N)`` can be from ``p(S)``."""
    if not (math.isfinite(rho) and math.isfinite(delta)):
        return math.inf
    r, d = Fraction(rho), Fraction(delta)
    return _up(sum((abs(a) * ((r + d) ** i - r**i) for i, a in enumerate(coefs) if i), Fraction(0)))


def _modulus_squared(coefs: list[Fraction]) -> list[Fraction]:
    """Coefficients ``c_j`` of ``|p(i theta)|^2 = sum_j c_j theta^(2j)`` (exact)."""
    n = len(coefs)
    re = [Fraction(0)] * n
    im = [Fraction(0)] * n
    for k, a in enumerate(coefs):
        sign = -1 if (k // 2) % 2 else 1  # i^k = (-1)^(k//2) for even k, (-1)^(k//2) i for odd k
        if k % 2 == 0:
            re[k] = sign * a
        else:
            im[k] = sign * a
    sq = [Fraction(0)] * (2 * n - 1)
    for i in range(n):
        for j in range(n):
            sq[i + j] += re[i] * re[j] + im[i] * im[j]
    assert all(v == 0 for v in sq[1::2])  # |p(i theta)|^2 is even in theta
    return sq[0::2]


def imaginary_axis_max(coefs: list[Fraction], rho: float) -> float:
    """An upper bound of ``max_{|theta| <= rho} |p(i theta)|``.

    ``q(t) = |p(i sqrt t)|^2`` is a polynomial with exact coefficients. On a grid of spacing h
    over ``[0, rho^2]``, ``q(t) <= q(t_j) + h sup|q'|`` between grid points, with
    ``sup|q'| <= sum_k k |c_k| T^(k-1)`` computed exactly; the float Horner evaluation at the grid
    points adds at most ``gamma_{2d+2} sum_k |c_k| T^k`` (Higham, Accuracy and Stability of
    Numerical Algorithms, sec. 5.1). For the truncated exponential, ``q - 1`` starts at
    ``t^((m+1)/2)`` with factorially small coefficients, so the slack is far below 1e-6.
    """
    if not math.isfinite(rho) or rho > 1e6:
        return math.inf
    c = _modulus_squared(coefs)
    t_max = Fraction(_up(Fraction(rho) ** 2))
    abs_sum = sum((abs(ck) * t_max**k for k, ck in enumerate(c)), Fraction(0))
    slope = sum((k * abs(ck) * t_max ** (k - 1) for k, ck in enumerate(c) if k), Fraction(0))
    h = float(t_max) / _GRID  # exact: t_max is a float and _GRID a power of two
    t = np.arange(_GRID + 1, dtype=np.float64) * h  # j * h may round, but stays in [0, t_max]
    q = np.zeros_like(t)
    for ck in reversed(c):
        q = q * t + float(ck)
    if not np.all(np.isfinite(q)):
        return math.inf
    d = len(c)
    gamma = (2 * d + 4) * EPS64 / (1 - (2 * d + 4) * EPS64)
    # Consecutive rounded grid points are at most h (1 + 2u) apart.
    total = Fraction(float(np.max(q))) + Fraction(gamma) * abs_sum * 2 + slope * Fraction(h) * Fraction(1 + 4 * EPS64)
    total = max(total, Fraction(0))
    root = math.sqrt(_up(total))
    return float(np.nextafter(root * (1 + 2 * EPS64), np.inf))


# ----------------------------------------------------------------------------- skew splits


def skew_split_matrix(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``A = S + N`` with S exactly skew: returns (S, fl(N), bound of ``||N - fl(N)||_2``)."""
    a = np.asarray(a, dtype=np.float64)
    s = (a - a.T) / 2.0  # fl(a_ij - a_ji) = -fl(a_ji - a_ij); halving is exact (no underflow here)
    n_hat = a - s
    return s, n_hat, _rounding_l1(n_hat)


def adjoint_kernel(w: np.ndarray) -> np.ndarray:
    """Kernel of the adjoint of a zero-padded 'same' stride-1 conv: swap channels, flip space."""
    flipped = w[(slice(None), slice(None)) + (slice(None, None, -1),) * (w.ndim - 2)]
    return np.ascontiguousarray(np.swapaxes(flipped, 0, 1))


def skew_split_kernel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Split a square conv kernel into an exactly skew-adjoint kernel and the rest (as for matrices).

    The returned bound covers the rounding of ``fl(W - S)``: a conv's norm is at most the sum of
    the absolute values of its kernel (each tap is a shift, norm <= 1, times a matrix whose norm is
    at most the sum of its absolute entries).
    """
    w = np.asarray(w, dtype=np.float64)
    s = (w - adjoint_kernel(w)) / 2.0
    n_hat = w - s
    return s, n_hat, _rounding_l1(n_hat)


def _rounding_l1(n_hat: np.ndarray) -> float:
    """Bound of the operator norm of the rounding error of one subtraction per entry."""
    return _up(Fraction(float(np.sum(np.abs(n_hat)))) * Fraction(2.0 * EPS64) * Fraction(1 + n_hat.size * EPS64))
