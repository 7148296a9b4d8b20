"""Margins -> certified radii (docs/certificate.md, docs/floating-point.md).

For a sample with target class ``t`` (its label, or the prediction when there are no labels):

* global radius ``(F_t - max_{i != t} F_i - delta) / (sqrt(2) L)``;
* pairwise radius ``min_{i != t} (F_t - F_i - delta) / (||a_t - a_i||_2 L_h)`` for every split
  point of the affine tail (``lipgraph.tail``);
* a single logit ``z`` (class 1 iff ``z > 0``): ``(|z| - delta) / L``, or ``/ (||a|| L_h)``.

The reported radius is the largest of these sound radii, 0 when the prediction is wrong.
Float allowance: ``delta`` per sample comes from a proven bound ``e(||x||)`` on the distance between
ONNX Runtime's float32 logits and the real-arithmetic network's (``lipgraph.floaterr``, derived in
docs/floating-point.md), charged twice so that the radius holds for the real network and for ONNX
Runtime's own outputs; ``1e-5 * max_j |F_j|`` stays as a floor. Norms and bounds are upper bounds
(rounding included), and every radius is rounded down. Ties: only ``i = t`` is excluded from the
max, so a tie gives radius 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipgraph.errors import LipgraphError

MARGIN_REL = 1e-5  # docs/floating-point.md: margins are reduced by at least this times max|logit|
_EPS64 = float(2.0**-53)
_SQRT2_UP = float(np.nextafter(math.sqrt(2.0), math.inf))


@dataclass
class Radii:
    radius: np.ndarray  # the reported radius per sample (0 when misclassified)
    global_radius: np.ndarray
    pairwise_radius: np.ndarray | None  # best pairwise radius per sample, None when no tail
    prediction: np.ndarray
    target: np.ndarray  # label, or the prediction when there are no labels
    correct: np.ndarray
    method: str  # "pairwise" or "global"
    float_error_choice: np.ndarray | None = None  # per sample: which (e, d) candidate set the margin reduction


def _round_down(r: np.ndarray) -> np.ndarray:
    """Absorb the few float64 roundings of a quotient, then step one ulp towards zero."""
    out = np.nextafter(r * (1.0 - 16.0 * _EPS64), 0.0)
    return np.maximum(out, 0.0)


def compute_radii(logits: np.ndarray, labels: np.ndarray | None, lipschitz: float,
                  tails: Sequence[Any] = (), float_error: np.ndarray | None = None,
                  float_error_slope: float = 0.0,
                  extra_float_errors: Sequence[tuple[Any, ...]] = ()) -> Radii:
    """Certified radii for ``logits`` (N, K) given the network bound and optional tail candidates.

    ``float_error`` (N,): a bound ``e`` on ``||logits - real logits||_2`` per sample, and
    ``float_error_slope`` the bound's growth ``d`` per unit of input norm (``e(s) = c + d s``).
    A logit difference moves by at most ``sqrt(2) e`` (one logit: ``e``). The margins are reduced
    by that at x (so the real network's margin at x is positive) and by the error anywhere within
    the radius r, ``e(s + r) <= e(s) + d r0`` with ``r0 >= r`` the radius with ``2 sqrt(2) e(s)``
    taken off (so ONNX Runtime's float margin is positive there too).
    ``extra_float_errors``: more sound ``(e per sample, d)`` pairs, or ``(e, d, e_x)`` with ``e_x <= e`` a
    bound valid at x only (``e_x + e`` then replaces ``2 e``: the first term speaks of x, the second of the
    ball). Each candidate gives its own reduction ``delta_c`` and the smallest is used per sample. The
    radius r computed with ``delta = delta_c`` is at most that candidate's ``r0`` (radii shrink as delta
    grows, and ``r0`` used ``sqrt(2) (e_c + e_x_c) <= delta_c``), so the argument above holds with the
    chosen candidate.
    """
    f = np.asarray(logits, dtype=np.float64)
    floor = MARGIN_REL * np.max(np.abs(f), axis=1) if f.ndim == 2 and f.size else np.zeros(len(f))
    if float_error is None:
        return _radii(f, labels, lipschitz, tails, floor)
    mult = 1.0 if f.ndim == 2 and f.shape[1] == 1 else _SQRT2_UP
    deltas = np.stack([_float_delta(f, labels, lipschitz, tails, floor, mult, *cand)
                       for cand in [(float_error, float_error_slope), *extra_float_errors]])
    radii = _radii(f, labels, lipschitz, tails, np.min(deltas, axis=0))
    radii.float_error_choice = np.argmin(deltas, axis=0)
    return radii


def _float_delta(f: np.ndarray, labels: np.ndarray | None, lipschitz: float, tails: Sequence[Any],
                 floor: np.ndarray, mult: float, float_error: np.ndarray, slope: float,
                 error_at_x: np.ndarray | None = None) -> np.ndarray:
    """The margin reduction of one ``(e, d[, e_x])`` candidate (see :func:`compute_radii`)."""
    err = np.asarray(float_error, dtype=np.float64)
    both = 2.0 * err if error_at_x is None else np.nextafter(err + np.asarray(error_at_x, dtype=np.float64), np.inf)
    base = np.maximum(both * mult, floor)
    if slope <= 0:
        return base
    r0 = _radii(f, labels, lipschitz, tails, base).radius
    return np.maximum(np.nextafter((both + slope * r0) * mult * (1.0 + 4 * _EPS64), np.inf), floor)


def _radii(f: np.ndarray, labels: np.ndarray | None, lipschitz: float, tails: Sequence[Any],
           delta: np.ndarray) -> Radii:
    if f.ndim != 2 or f.shape[1] < 1:
        raise LipgraphError(f"the logits have shape {f.shape}; expected (samples, classes)")
    n, k = f.shape
    if not np.all(np.isfinite(f)):
        bad = int(np.flatnonzero(~np.isfinite(f).all(axis=1))[0])
        raise LipgraphError(f"the model produced NaN or Inf logits (first at sample {bad}); check the inputs")
    if not (lipschitz >= 0):
        raise LipgraphError(f"the Lipschitz bound is {lipschitz}; cannot certify")
    rows = np.arange(n)
    if k == 1:
        z = f[:, 0]
        pred = (z > 0).astype(np.int64)
        target = pred if labels is None else labels
        signed = np.where(target == 1, z, -z)
        usable = np.maximum(signed - delta, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            glob = _round_down(np.where(usable > 0, usable / lipschitz, 0.0))
            pair = None
            for cand in tails:
                den = float(cand.row_norms()[0]) * cand.l_h * (1.0 + 4 * _EPS64)
                r = _round_down(np.where(usable > 0, usable / den, 0.0))
                pair = r if pair is None else np.maximum(pair, r)
    else:
        pred = np.argmax(f, axis=1)
        target = pred if labels is None else labels
        ft = f[rows, target]
        others = f.copy()
        others[rows, target] = -np.inf  # exclude only index t itself (docs/certificate.md, ties)
        margin = ft - np.max(others, axis=1)
        usable = np.maximum(margin - delta, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            glob = _round_down(np.where(usable > 0, usable / (_SQRT2_UP * lipschitz), 0.0))
        pair = None
        for cand in tails:
            r = _pairwise(f, target, delta, cand)
            pair = r if pair is None else np.maximum(pair, r)
    correct = pred == target
    best = glob if pair is None else np.maximum(glob, pair)
    best = np.where(correct, best, 0.0)
    method = "pairwise" if pair is not None else "global"
    return Radii(best, np.where(correct, glob, 0.0), None if pair is None else np.where(correct, pair, 0.0),
                 pred.astype(np.int64), np.asarray(target, dtype=np.int64), correct, method)


def _pairwise(f: np.ndarray, target: np.ndarray, delta: np.ndarray, cand: Any) -> np.ndarray:
    n, k = f.shape
    if cand.matrix.shape[0] != k:
        raise LipgraphError(
            f"the affine tail has {cand.matrix.shape[0]} outputs but the model gives {k} logits"
        )
    norms = np.empty((k, k))
    for t in np.unique(target):
        norms[t] = cand.pair_norms(int(t))
    den = norms[target] * (cand.l_h * (1.0 + 4 * _EPS64))  # (N, K)
    rows = np.arange(n)
    diff = f[rows, target][:, None] - f - delta[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(diff > 0, diff / den, 0.0)  # a zero-norm pair with positive margin: +inf (never flips)
    q = np.where((diff > 0) & (den == 0), np.inf, q)
    q[rows, target] = np.inf
    return _round_down(np.min(q, axis=1))
