"""Weights a pass computed in float64: their proven relative error ``rho`` and what it adds to a norm.

What: a pass that folds a scale into a weight (``W' = fl(W * fl(gamma / fl(sqrt(fl(var + eps)))))``,
``fl(W * fl(1 / c))``) stores a rounded weight W', while the model's exact map uses ``W_exact``. The pass
records on the node (``Node.rho``) a bound with ``|W_exact_ij - W'_ij| <= rho |W'_ij|`` for every entry:
relative to the *stored* weight, so that a rule can bound the difference from what it holds.
How: each stored entry is ``W_exact * prod_i (1 + delta_i)^(+-1)`` over k roundings ``|delta_i| <= u``
(a square root contributes ``(1 + delta)^(1/2)``, itself within one such factor), so by Higham 2002,
Lemma 3.1, ``W_exact = W' (1 + theta_k)`` with ``|theta_k| <= gamma_k``: the reciprocal of a product of
such factors is again one, hence rho relative to W' is gamma_k as well. Folds applied one after another
compose: ``W_exact = W'' (1 + a)(1 + b)``, rho = ``(1 + a)(1 + b) - 1`` rounded up.
Norm: ``||W_exact|| <= ||W'|| + ||W_exact - W'|| <= ||W'|| + rho || |W'| ||_2`` (the difference is
entrywise at most ``rho |W'|`` and the 2-norm is monotone in the absolute values), and ``|| |W'| ||_2 <=
sqrt(||W'||_1 ||W'||_inf)`` (Schur test). For a convolution the row sums of ``|T|`` are at most the sum
of ``|kernel|`` over one output channel and the column sums at most the sum over the output channels of
one group and all taps for one input channel (a tap meets each input position at most once, whatever the
stride, padding or wrap), so the same test needs only the kernel.
Rounding: the sums of nonnegative terms are computed in float64 and inflated by gamma_(n+1) (Higham 2002,
sec. 3.1), the final value nudged up.
Source: Higham 2002, Accuracy and Stability of Numerical Algorithms, ch. 2-3 (Lemma 3.1, sec. 3.5);
Schur 1911 (the row/column-sum bound of a nonnegative matrix's norm).
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.norms import EPS64
from lipgraph.norms.rounding import gamma


def _up(x: float) -> float:
    """x (the result of at most three roundings of nonnegative terms) moved up past their error."""
    return 0.0 if x == 0.0 else float(np.nextafter(x * (1.0 + 4.0 * EPS64), np.inf))


def compose(*rhos: float) -> float:
    """``prod (1 + rho_i) - 1`` rounded up: the relative error of a weight refolded after earlier folds."""
    for r in rhos:
        if r < 0 or not math.isfinite(r):
            raise ValueError(f"a relative error bound must be finite and nonnegative, got {r}")
    live = [float(r) for r in rhos if r > 0]
    if len(live) <= 1:
        return live[0] if live else 0.0  # nothing to multiply: the bound itself, exact
    # (1 + a)(1 + b) - 1 = a + b + ab, formed without the cancellation of ``1 + a``: a sum and product of
    # nonnegative terms, each rounding covered by _up's factor
    acc = live[0]
    for r in live[1:]:
        acc = _up(acc + r + acc * r)
    return acc


def fold_rho(roundings: int, *earlier: float) -> float:
    """rho of a weight formed by ``roundings`` float64 operations from values within ``earlier`` of exact."""
    return compose(gamma(roundings), *earlier) if roundings else compose(*earlier)


def _sum_up(a: np.ndarray, axis: int | tuple[int, ...] | None) -> np.ndarray:
    """Sums of nonnegative entries, inflated to upper bounds of the exact sums."""
    n = a.size if axis is None else math.prod(a.shape[ax] for ax in np.atleast_1d(axis))
    return np.sum(a, axis=axis) * (1.0 + gamma(max(int(n), 1) + 1))


def _schur(rows: float, cols: float) -> float:
    """``sqrt(rows * cols)`` rounded up, as a product of square roots: no underflow for tiny weights."""
    return _up(math.sqrt(rows) * math.sqrt(cols))


def abs_norm_dense(w: np.ndarray) -> float:
    """Upper bound of ``|| |W| ||_2`` for a matrix (1-D: a row vector), by the Schur test."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    a = a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])
    if a.size == 0:
        return 0.0
    rows = float(_sum_up(a, 1).max())
    cols = float(_sum_up(a, 0).max())
    return _schur(rows, cols)


def abs_norm_conv(w: np.ndarray, groups: int) -> float:
    """Upper bound of ``|| |T| ||_2`` for a (transposed or circular) conv with kernel ``w`` (M, C/g, k...).

    Valid for every stride, dilation, padding and input size (see the module docstring); a
    ConvTranspose is the adjoint of the conv with the same kernel, and ``|T^T| = |T|^T``."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    if a.size == 0:
        return 0.0
    m, cg = a.shape[0], a.shape[1]
    taps = tuple(range(2, a.ndim))
    rows = float(_sum_up(a.reshape(m, -1), 1).max())
    per_tap = _sum_up(a, taps) if taps else a  # (M, C/g): one entry per (output, input) channel pair
    g = max(int(groups), 1)
    cols = float(_sum_up(per_tap.reshape(g, m // g, cg), 1).max())
    return _schur(rows, cols)


def add_rounding(value: float, rho: float, abs_norm: float) -> float:
    """``value + rho * abs_norm`` rounded up (``value`` itself when rho is 0: nothing was computed)."""
    if rho == 0.0:
        return value
    return _up(value + _up(rho * abs_norm))
