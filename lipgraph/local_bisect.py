"""Per-sample radii between the grid's eps values: bracketing on the local bound (``--local-bounds``).

The grid search of :mod:`lipgraph.local_bounds` leaves each sample it tried with a verified radius ``lo`` (its
Lipschitz radius or the largest verified eps) and, above it, the first eps that failed (``hi``; a cap when every
eps passed). The largest verified radius lies somewhere in ``[lo, hi)``. A few bracketing steps narrow it down:
each verifies a radius inside the bracket with the same bound and the same float allowance as a grid point, and
moves ``lo`` up where it passes, ``hi`` down where it fails. The radius tried is the zero of the line through the
bound's slack (``min_j lb_j`` minus the allowance) at both ends where both are known (regula falsi: the slack is
close to linear in the radius, so this lands near the largest verified radius in one or two steps), the midpoint
otherwise (bisection). The sample's radius is the last ``lo``: a radius that was itself verified, never an
interpolation. Since every new radius stays below ``hi``, no grid eps changes its verdict, so
certified accuracy at the grid's eps values is unchanged; only the radii between grid points move up.

Cost: at most :data:`BISECT_STEPS` more evaluations per sample, each one of the work ``auto`` already capped per
sample and eps. Everything is per sample (the bound is evaluated for one sample at a time here), so ``--shard``
parts merge into exactly one run's radii.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# MNIST MLP, 300 images: median radius 0.289 on the grid; 0.368 after 4 midpoint steps, 0.375 after 10; 0.373 after
# 3 of these steps (the first a midpoint where the grid gives no slack above lo), 0.375 after 4; 0.360 after 2. The
# default is 2: each step is one more bound per sample (3 steps made a 1,000-image MNIST certify 55% slower, 2 about
# a third less); `certify --radius-steps N` chooses
BISECT_STEPS = 2
MIN_STEP = 0.05  # a radius tried is at least this fraction of the bracket away from either end
QUANTUM = 64  # the fraction of the bracket where a radius is tried is a multiple of 1 / QUANTUM
CAP_FACTOR = 2.0  # where every grid eps passed: search up to this multiple of the largest eps


def bisect_radii(
    lo: np.ndarray,
    hi: np.ndarray,
    steps: int,
    verify: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    slack_lo: np.ndarray | None = None,
    floor: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """``lo`` (verified radii) raised by ``steps`` bracketing steps towards ``hi`` (radii that failed, or a cap).

    ``verify(rows, r)``: per row of ``rows`` (indices into ``lo``), whether radius ``r[i]`` is verified, and the
    bound's slack there (``min_j lb_j - allowance``). ``slack_lo``: the slack at ``lo`` where the bound verified it
    (NaN otherwise). Returns the new ``lo`` (each entry either the given one or a radius ``verify`` accepted) and
    the number of radii checked. ``floor``: radii the caller has anyway; a row stops once its ``hi`` is at or below
    its floor (nothing it could still verify would count), which leaves every other row's path as it was."""
    lo = np.array(lo, dtype=np.float64, copy=True)
    hi = np.array(hi, dtype=np.float64, copy=True)
    s_lo = np.full(len(lo), np.nan) if slack_lo is None else np.array(slack_lo, dtype=np.float64, copy=True)
    s_hi = np.full(len(lo), np.nan)  # only slacks computed here: the grid's failures may have been skipped
    checked = 0
    for _ in range(max(int(steps), 0)):
        # where both ends' slacks are known, the zero of the line through them (regula falsi); the midpoint
        # elsewhere. Never closer than MIN_STEP of the bracket to either end.
        with np.errstate(all="ignore"):
            t = s_lo / (s_lo - s_hi)
        known = np.isfinite(t) & (s_lo > 0) & (s_hi <= 0)
        # rounded down to a 1/64 of the bracket: a slack from a batched grid evaluation may differ in its last bits
        # with the batch (BLAS), which must not move the radius tried (--shard parts merge exactly)
        t = np.floor(np.clip(np.where(known, t, 0.5), MIN_STEP, 1.0 - MIN_STEP) * QUANTUM) / QUANTUM
        mid = lo + (hi - lo) * t
        live = (mid > lo) & (mid < hi)  # an interval too narrow for float64 stops
        if floor is not None:
            live &= hi > floor
        rows = np.flatnonzero(live)
        if not rows.size:
            break
        ok, slack = verify(rows, mid[rows])
        ok, slack = np.asarray(ok, dtype=bool), np.asarray(slack, dtype=np.float64)
        checked += int(rows.size)
        lo[rows[ok]], s_lo[rows[ok]] = mid[rows[ok]], slack[ok]
        hi[rows[~ok]], s_hi[rows[~ok]] = mid[rows[~ok]], slack[~ok]
    return lo, checked
