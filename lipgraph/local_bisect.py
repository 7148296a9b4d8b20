"""Per-sample radii between the grid's eps values: bisection on the local bound (``--local-bounds``).

The grid search of :mod:`lipgraph.local_bounds` leaves each sample it tried with a verified radius ``lo`` (its
Lipschitz radius or the largest verified eps) and, above it, the first eps that failed (``hi``; a cap when every
eps passed). The largest verified radius lies somewhere in ``[lo, hi)``. A few bisection steps narrow it down:
each verifies the midpoint with the same bound and the same float allowance as a grid point, and moves ``lo`` up
where it passes, ``hi`` down where it fails. The sample's radius is the last ``lo``: a radius that was itself
verified, never an interpolation. Since every new radius stays below ``hi``, no grid eps changes its verdict, so
certified accuracy at the grid's eps values is unchanged; only the radii between grid points move up.

Cost: at most :data:`BISECT_STEPS` more evaluations per sample, each one of the work ``auto`` already capped per
sample and eps. Everything is per sample (the bound is evaluated for one sample at a time here), so ``--shard``
parts merge into exactly one run's radii.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BISECT_STEPS = 4  # interval shrunk 16-fold: a radius within 1/16 of the gap between two grid values
CAP_FACTOR = 2.0  # where every grid eps passed: bisect up to this multiple of the largest eps


def bisect_radii(
    lo: np.ndarray,
    hi: np.ndarray,
    steps: int,
    verify: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, int]:
    """``lo`` (verified radii) raised by ``steps`` bisection steps towards ``hi`` (radii that failed, or a cap).

    ``verify(rows, r)``: per row of ``rows`` (indices into ``lo``), whether radius ``r[i]`` is verified. Returns
    the new ``lo`` (each entry either the given one or a radius ``verify`` accepted) and the number of radii
    checked."""
    lo = np.array(lo, dtype=np.float64, copy=True)
    hi = np.array(hi, dtype=np.float64, copy=True)
    checked = 0
    for _ in range(max(int(steps), 0)):
        mid = lo + (hi - lo) / 2.0
        rows = np.flatnonzero((mid > lo) & (mid < hi))  # an interval too narrow for float64 stops
        if not rows.size:
            break
        ok = np.asarray(verify(rows, mid[rows]), dtype=bool)
        checked += int(rows.size)
        lo[rows[ok]] = mid[rows[ok]]
        hi[rows[~ok]] = mid[rows[~ok]]
    return lo, checked
