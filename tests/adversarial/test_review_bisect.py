"""Adversarial review of the local radii between grid points (lipgraph.local_bisect, lipgraph.local_bounds).

Checked against oracles independent of the bracketing: every radius the local bound raises is re-verified here
with a fresh single-sample bound at that very radius and the allowance for that radius (``e + d r``); it stays
below the grid eps that failed; a float64 attack on the real chain never finds a margin below the bound; the
result is monotone in the incoming radius; and it does not depend on which other samples share the batch
(``--shard`` parts merge into exactly one run's radii), also at a crafted near tie.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.local_bounds import allowance, local_radii
from lipgraph.norms.crown_l2 import Affine, CrownL2


def _chain(seed: int, sizes: list[int], leaky: float = 0.0) -> CrownL2:
    rng = np.random.default_rng(seed)
    layers = [
        Affine(
            rng.standard_normal((sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
            rng.standard_normal(sizes[i + 1]) * 0.1,
            np.zeros(sizes[i + 1]),
        )
        for i in range(len(sizes) - 1)
    ]
    return CrownL2(layers, [leaky] * (len(sizes) - 2))


def _logits(crown: CrownL2, x: np.ndarray) -> np.ndarray:
    h = x
    for k, lay in enumerate(crown.layers):
        h = h @ lay.w.T + lay.b
        if k < len(crown.alphas):
            h = np.where(h >= 0, h, crown.alphas[k] * h)
    return h


def _data(crown: CrownL2, seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    x = rng.standard_normal((n, crown.layers[0].w.shape[1])).astype(np.float32).astype(np.float64)
    logits = _logits(crown, x)
    return x, logits, np.argmax(logits, axis=1)


def _run(crown, x, logits, y, radius, grid, errs, steps=3, margin_rel=1e-5):
    return local_radii(crown, x, logits, y, np.ones(len(x), bool), radius, grid, errs, margin_rel, steps)


def test_a_near_tie_gets_the_same_radius_whatever_shares_its_batch() -> None:
    """A product's rows differ in their last bits between few-row and many-row BLAS kernels. With the float
    allowance placed between the bound computed in a 64-sample batch and alone, the sample's grid verdict must not
    depend on it: a shard holding that sample alone and the whole run must agree (they did not: 0.02 vs 0.015)."""
    crown = _chain(0, [40, 200, 150, 120, 10])
    x, logits, y = _data(crown, 0, 64)
    r = 0.02
    z, z_err = crown.first_layer(x)  # what a 64-row batch computes
    lb_batch = crown.margin_lower_bounds(x, y, r, (z, z_err)).min(axis=1)
    lb_alone = np.array([crown.margin_lower_bounds(x[i : i + 1], y[i : i + 1], r)[0].min() for i in range(64)])
    ties = np.flatnonzero((lb_batch != lb_alone) & (np.minimum(lb_batch, lb_alone) > 0))
    if not ties.size:
        pytest.skip("this BLAS gives every row the same bits for any number of rows: no tie to craft")
    i = int(ties[0])
    lo, hi = sorted([lb_batch[i], lb_alone[i]])
    a, b = 0.0, hi  # the float error e whose allowance lies in [lo, hi): bisection on e (d = 0, no floor)
    for _ in range(200):
        mid = (a + b) / 2
        if allowance([(np.array([mid]), 0.0)], logits[i : i + 1], r, 0.0)[0] < hi:
            a = mid
        else:
            b = mid
    assert lo <= allowance([(np.array([a]), 0.0)], logits[i : i + 1], r, 0.0)[0] < hi
    e = np.zeros(64)
    e[i] = a
    grid = [r, 2 * r]
    full = _run(crown, x, logits, y, np.zeros(64), grid, [(e, 0.0)], steps=2, margin_rel=0.0)
    alone = _run(crown, x[i : i + 1], logits[i : i + 1], y[i : i + 1], np.zeros(1), grid, [(e[i : i + 1], 0.0)], 2, 0.0)
    three = _run(crown, x[i : i + 3], logits[i : i + 3], y[i : i + 3], np.zeros(3), grid, [(e[i : i + 3], 0.0)], 2, 0.0)
    assert full.radius[i] == alone.radius[0] == three.radius[0], (full.radius[i], alone.radius[0], three.radius[0])


@pytest.mark.parametrize("seed", range(4))
def test_radii_do_not_depend_on_the_batch(seed: int) -> None:
    """The whole run, every sample alone, and shards of 3 and 7 samples: bit-for-bit the same radii and counts."""
    crown = _chain(seed, [12, 30, 20, 5], leaky=0.1 * (seed % 2))
    x, logits, y = _data(crown, seed, 40)
    rng = np.random.default_rng(seed)
    e = rng.uniform(0.0, 0.05, 40)
    incoming = np.where(rng.random(40) < 0.3, rng.uniform(0, 0.3, 40), 0.0)
    grid = [0.05, 0.1, 0.2, 0.4]
    full = _run(crown, x, logits, y, incoming, grid, [(e, 0.02)])
    for size in (1, 3, 7):
        got = np.concatenate(
            [
                _run(
                    crown,
                    x[k : k + size],
                    logits[k : k + size],
                    y[k : k + size],
                    incoming[k : k + size],
                    grid,
                    [(e[k : k + size], 0.02)],
                ).radius
                for k in range(0, 40, size)
            ]
        )
        np.testing.assert_array_equal(got, full.radius, err_msg=f"shards of {size}")


def _verified(crown, x, logits, y, e, d, margin_rel, r) -> bool:
    """A fresh check of radius ``r`` for one sample: its own single-sample bound against the allowance at r."""
    lb = crown.margin_lower_bounds(x[None], y[None], float(r))
    return bool(np.min(lb) > allowance([(np.array([e]), d)], logits[None], float(r), margin_rel)[0])


@pytest.mark.parametrize("seed", range(6))
def test_every_raised_radius_is_verified_at_itself_and_below_the_failing_eps(seed: int) -> None:
    crown = _chain(seed, [6, 16, 12, 4], leaky=0.05 * (seed % 3 == 2))
    x, logits, y = _data(crown, seed, 30)
    rng = np.random.default_rng(seed + 7)
    e, d = rng.uniform(0.0, 0.1, 30), float(rng.uniform(0.0, 0.3))
    grid = sorted(rng.uniform(0.02, 1.0, 4).round(3).tolist())
    grid_only = _run(crown, x, logits, y, np.zeros(30), grid, [(e, d)], steps=0)
    res = _run(crown, x, logits, y, np.zeros(30), grid, [(e, d)], steps=4)
    caps = np.array(grid + [2.0 * grid[-1]])
    for i in np.flatnonzero(res.radius > 0):
        r = res.radius[i]
        assert _verified(crown, x[i], logits[i], y[i], e[i], d, 1e-5, r), (i, r)
        # below the grid eps that failed (or the cap): no grid verdict changed
        nxt = caps[np.searchsorted(caps, grid_only.radius[i], side="right")]
        assert grid_only.radius[i] <= r < nxt
        # the allowance grows with r: the same sample would not pass at r with the allowance of its grid radius
        # plus the slope's share; checked by recomputing at r above (a smaller allowance would pass more)
    for e_ in grid:
        assert np.sum(res.radius >= e_) == np.sum(grid_only.radius >= e_)
    assert np.any(res.radius > grid_only.radius), "bisection should raise something here"


@pytest.mark.parametrize("seed", range(3))
def test_float64_attack_never_goes_below_the_bound_inside_the_radius(seed: int) -> None:
    """PGD in float64 on the real chain (the function the bound is about): the margin at every point it visits
    inside a certified radius stays above the allowance at that radius (the bound sits between them)."""
    crown = _chain(seed, [5, 14, 10, 3])
    x, logits, y = _data(crown, seed, 25)
    e = np.full(25, 0.01)
    res = _run(crown, x, logits, y, np.zeros(25), [0.05, 0.1, 0.2, 0.4, 0.8], [(e, 0.05)], steps=4)
    rng = np.random.default_rng(seed)
    for i in np.flatnonzero(res.radius > 0):
        r = float(res.radius[i])
        allow = allowance([(e[i : i + 1], 0.05)], logits[i : i + 1], r, 1e-5)[0]
        for j in range(3):
            if j == y[i]:
                continue
            for start in range(4):
                p = x[i] + (rng.standard_normal(5) * r / 3 if start else 0.0)
                for _ in range(40):  # gradient of F_t - F_j by finite differences (5 inputs)
                    f0 = _logits(crown, p[None])[0]
                    g = np.array(
                        [
                            (_logits(crown, (p + 1e-6 * np.eye(5)[k])[None])[0] @ (np.eye(3)[y[i]] - np.eye(3)[j]))
                            - (f0[y[i]] - f0[j])
                            for k in range(5)
                        ]
                    )
                    p = p - 0.1 * r * g / (np.linalg.norm(g) + 1e-300)
                    dlt = p - x[i]
                    p = x[i] + dlt * min(1.0, r / max(np.linalg.norm(dlt), 1e-300))
                    f = _logits(crown, p[None])[0]
                    assert f[y[i]] - f[j] > allow, (i, j, r)


@pytest.mark.parametrize("seed", range(8))
def test_monotone_in_the_incoming_radius(seed: int) -> None:
    """Random chains, random incoming radii r1 <= r2 (per-pair bounds may give either): result(r2) >= result(r1)
    per sample, and never below the radius a sample came with."""
    crown = _chain(seed, [8, 20, 16, 4], leaky=0.1 * (seed % 2))
    x, logits, y = _data(crown, seed, 32)
    rng = np.random.default_rng(seed + 1)
    e, d = rng.uniform(0.0, 0.05, 32), float(rng.uniform(0.0, 0.2))
    grid = [0.05, 0.1, 0.15, 0.3, 0.6]
    base = _run(crown, x, logits, y, np.zeros(32), grid, [(e, d)])
    # incoming radii near the interesting points: on grid values, just above/below them, near the result itself
    pts = np.concatenate([np.array(grid), np.array(grid) * (1 + 1e-12), np.array(grid) * (1 - 1e-12), [0.0, 1.3]])
    for _ in range(4):
        r1 = np.where(rng.random(32) < 0.5, rng.choice(pts, 32), base.radius * rng.uniform(0.5, 1.0, 32))
        r2 = r1 + np.where(rng.random(32) < 0.5, rng.uniform(0, 0.2, 32), 0.0)
        a = _run(crown, x, logits, y, r1, grid, [(e, d)]).radius
        b = _run(crown, x, logits, y, r2, grid, [(e, d)]).radius
        assert np.all(a >= r1) and np.all(b >= r2)
        bad = np.flatnonzero(b < a)
        assert not bad.size, [(int(i), r1[i], r2[i], a[i], b[i]) for i in bad]


def test_a_huge_last_eps_keeps_the_report_valid_json() -> None:
    """``--eps 1e308``: the bracket's cap (2x the last eps) overflowed to inf, which the JSON report wrote as
    ``Infinity`` (no JSON number). The cap stays finite and nothing is certified by the overflowing bound."""
    import json
    import warnings

    crown = _chain(0, [4, 8, 3])
    x, logits, y = _data(crown, 0, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bound overflows at such radii (and verifies nothing there)
        res = _run(crown, x, logits, y, np.zeros(6), [0.1, 1e308], [(np.zeros(6), 0.0)])
    json.dumps(res.meta, allow_nan=False)
    assert np.all(res.radius < 1e308)
