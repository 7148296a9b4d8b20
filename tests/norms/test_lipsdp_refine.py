"""The smoothed refinement of a pair's LipSDP-neuron multipliers (lipgraph.norms.lipsdp_refine).

Oracles: ``lipsdp.rho_and_gradient`` (the top eigenvalue and its gradient, itself checked against the dense
certificate matrix in test_lipsdp.py), central finite differences of the smoothed value, the exact maximum
over activation patterns (a verified bound may never be below it) and a long run of the same method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipgraph.norms import lipsdp, lipsdp_refine
from tests.norms.test_lipsdp import _net, _pattern_max


def _start(w: lipsdp.ChainWeights, i: int, j: int):
    prep = lipsdp.prepare(w)
    rec = lipsdp.fast_recursion(prep)
    rho, t = lipsdp.fast_candidate(prep, rec, i, j)
    return prep, rho, t


@pytest.mark.parametrize("sizes", [[4, 7, 5], [6, 5, 4, 3]])  # a first layer wider than the input: G has rank 4
def test_smoothed_value_and_gradient(sizes: list[int]) -> None:
    rng = np.random.default_rng(2)
    w = _net(rng, sizes, classes=3)
    prep, _, t0 = _start(w, 0, 2)
    t = [x * np.exp(0.2 * rng.standard_normal(x.shape)) * 1.3 for x in t0]
    c = w.last[0] - w.last[2]
    rho, grads = lipsdp.rho_and_gradient(prep, t, c)
    assert grads is not None
    # at a tiny mu the smoothing is the top eigenvalue itself, gradient included
    value, top, g_tiny = lipsdp_refine.smoothed_rho(prep, t, c, 1e-9 * rho)
    assert top == pytest.approx(rho, rel=1e-10) and value == pytest.approx(rho, rel=1e-7)
    for a, b in zip(g_tiny, grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9 * np.max(np.abs(b)))
    # at a large mu: lambda_max <= f_mu <= lambda_max + mu log n, and the gradient is f_mu's
    mu = 0.05 * rho
    value, top, g = lipsdp_refine.smoothed_rho(prep, t, c, mu)
    assert top <= value <= top + mu * math.log(sizes[1]) + 1e-9
    h = 1e-6
    for k, idx in [(0, 1), (0, 3), (1, 0), (len(t) - 1, 2)]:
        tp = [x.copy() for x in t]
        tm = [x.copy() for x in t]
        tp[k][idx] += h
        tm[k][idx] -= h
        fd = (lipsdp_refine.smoothed_rho(prep, tp, c, mu)[0] - lipsdp_refine.smoothed_rho(prep, tm, c, mu)[0]) / (2 * h)
        assert g[k][idx] == pytest.approx(fd, rel=1e-4, abs=1e-7)
    # multipliers too small for c c^T: no value, the line search must step back
    small = [x * 1e-3 for x in t]
    assert lipsdp_refine.smoothed_rho(prep, small, c, mu)[2] is None


@pytest.mark.parametrize("seed", range(4))
def test_refined_bounds_are_verified_sound_and_near_a_long_run(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = _net(rng, [4, 5, 4], classes=3, scale=1.5)
    for i, j in [(0, 1), (1, 2)]:
        prep, rho0, t0 = _start(w, i, j)
        fast = lipsdp.verify_pair(prep, i, j, rho0, t0)
        rho, t = lipsdp_refine.refine_pair(prep, i, j, rho0, t0)
        res = lipsdp.verify_pair(prep, i, j, rho, t)
        assert res.accepted
        assert res.bound <= fast.bound * (1 + 1e-12)
        exact = _pattern_max(w, i, j)  # no bound over every pattern may be below the worst pattern
        assert res.bound >= exact * (1 - 1e-9)
        long_schedule = ((1e-2, 100), (1e-3, 200), (1e-4, 200), (1e-5, 200))
        rho_long, _ = lipsdp_refine.refine_pair(prep, i, j, rho0, t0, long_schedule)
        assert math.sqrt(rho) <= math.sqrt(rho_long) * 1.02, "the default stage should be near convergence"


def test_refinement_beats_the_fast_candidate_and_is_reproducible() -> None:
    rng = np.random.default_rng(7)
    w = _net(rng, [10, 12, 12, 8], classes=4)
    prep, rho0, t0 = _start(w, 0, 3)
    a = lipsdp_refine.refine_pair(prep, 0, 3, rho0, t0)
    b = lipsdp_refine.refine_pair(prep, 0, 3, rho0, t0)
    assert a[0] < 0.9 * rho0
    assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    # a start that is already better than anything evaluated is returned unchanged
    same = lipsdp_refine.refine_pair(prep, 0, 3, a[0] * 0.5, t0)
    assert same[0] == a[0] * 0.5 and same[1] is t0
