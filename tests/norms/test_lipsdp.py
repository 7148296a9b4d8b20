"""Per-pair LipSDP-neuron bounds (lipgraph.norms.lipsdp) against exact oracles on tiny ReLU chains.

Oracle: LipSDP-neuron certifies every diagonal slope matrix in [0, 1], so a verified bound must be
at least ``max over all 0/1 activation patterns of ||c^T D_m W_m ... D_1 W_1||_2`` (computed exactly
in float64 for a few hidden units); it must also be at least the norm of the true gradient at any
input. A wrong multiplier must not be accepted.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lipgraph.norms import lipsdp, lipsdp_refine


def _net(rng: np.random.Generator, sizes: list[int], classes: int, scale: float = 1.0) -> lipsdp.ChainWeights:
    ws = [rng.standard_normal((b, a)) * scale / math.sqrt(a) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    last = rng.standard_normal((classes, sizes[-1]))
    return lipsdp.ChainWeights(ws, [0.0] * len(ws), last, 0.0)


def _pattern_max(w: lipsdp.ChainWeights, i: int, j: int) -> float:
    """max over every 0/1 pattern of the hidden units of ||c^T D_m W_m ... D_1 W_1||_2."""
    c = w.last[i] - w.last[j]
    sizes = w.sizes
    best = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        d = np.array(bits)
        jac = np.eye(w.hidden[0].shape[1])
        off = 0
        for wk, s in zip(w.hidden, sizes, strict=True):
            jac = d[off : off + s, None] * (wk @ jac)
            off += s
        best = max(best, float(np.linalg.norm(c @ jac)))
    return best


def _gradient_lower(w: lipsdp.ChainWeights, i: int, j: int, rng: np.random.Generator, n: int = 300) -> float:
    """Norms of the real gradient of F_i - F_j at random inputs: lower estimates of the constant."""
    c = w.last[i] - w.last[j]
    best = 0.0
    for _ in range(n):
        x = rng.standard_normal(w.hidden[0].shape[1])
        jac = np.eye(len(x))
        h = x
        for wk in w.hidden:
            z = wk @ h + 0.1 * rng.standard_normal(wk.shape[0])
            jac = (z > 0)[:, None] * (wk @ jac)
            h = np.maximum(z, 0.0)
        best = max(best, float(np.linalg.norm(c @ jac)))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sizes", [[3, 4, 4], [5, 6], [4, 3, 3, 3]])
def test_verified_bounds_dominate_every_activation_pattern(seed: int, sizes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    w = _net(rng, sizes, classes=3)
    prep = lipsdp.prepare(w)
    rec = lipsdp.fast_recursion(prep)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        exact = _pattern_max(w, i, j)
        rho, t = lipsdp.fast_candidate(prep, rec, i, j)
        fast = lipsdp.verify_pair(prep, i, j, rho, t)
        assert fast.accepted
        rho2, t2 = lipsdp_refine.refine_pair(prep, i, j, rho, t)
        refined = lipsdp.verify_pair(prep, i, j, rho2, t2)
        assert refined.accepted
        assert refined.bound <= fast.bound * (1 + 1e-9), "refinement never loosens"
        assert refined.bound >= exact * (1 - 1e-12), (refined.bound, exact)
        assert fast.bound >= exact * (1 - 1e-12)
        # and the product of norms is never beaten from below, nor by much from above
        naive = np.linalg.norm(w.last[i] - w.last[j]) * prep.prefix_norms[-1]
        assert refined.bound <= naive * (1 + 1e-6)


def test_bounds_beat_the_product_on_a_deeper_net_and_stay_above_gradients() -> None:
    rng = np.random.default_rng(7)
    w = _net(rng, [20, 30, 30, 30], classes=4, scale=1.5)
    prep = lipsdp.prepare(w)
    rec = lipsdp.fast_recursion(prep)
    ratios = []
    for i, j in [(0, 1), (2, 3)]:
        rho, t = lipsdp.fast_candidate(prep, rec, i, j)
        rho2, t2 = lipsdp_refine.refine_pair(prep, i, j, rho, t, lipsdp_refine.STAGES[0] + lipsdp_refine.STAGES[1])
        res = lipsdp.verify_pair(prep, i, j, rho2, t2)
        assert res.accepted
        assert res.bound >= _gradient_lower(w, i, j, rng)
        ratios.append(res.bound / (np.linalg.norm(w.last[i] - w.last[j]) * prep.prefix_norms[-1]))
    assert max(ratios) < 0.9, f"LipSDP should be clearly tighter than the product of norms here: {ratios}"


def test_rho_matches_the_dense_certificate_and_its_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(3)
    w = _net(rng, [6, 5, 4], classes=3)
    prep = lipsdp.prepare(w)
    rec = lipsdp.fast_recursion(prep)
    rho0, t0 = lipsdp.fast_candidate(prep, rec, 0, 2)
    t = [x * np.exp(0.2 * rng.standard_normal(x.shape)) * 1.3 for x in t0]
    c = w.last[0] - w.last[2]
    rho, grads = lipsdp.rho_and_gradient(prep, t, c)
    assert grads is not None
    # dense oracle: the full matrix Q(rho, T) over (dx_0, dx_1, dx_2) is PSD exactly from rho on
    n0, (m1, m2) = w.hidden[0].shape[1], w.sizes
    n = n0 + m1 + m2

    def q(r: float) -> np.ndarray:
        mat = np.zeros((n, n))
        mat[:n0, :n0] = r * np.eye(n0)
        mat[n0 : n0 + m1, n0 : n0 + m1] = np.diag(2 * t[0])
        mat[n0 + m1 :, n0 + m1 :] = np.diag(2 * t[1]) - np.outer(c, c)
        b1 = -(t[0][:, None] * w.hidden[0])
        b2 = -(t[1][:, None] * w.hidden[1])
        mat[n0 : n0 + m1, :n0], mat[:n0, n0 : n0 + m1] = b1, b1.T
        mat[n0 + m1 :, n0 : n0 + m1], mat[n0 : n0 + m1, n0 + m1 :] = b2, b2.T
        return mat

    assert np.linalg.eigvalsh(q(rho * (1 + 1e-6)))[0] > -1e-9
    assert np.linalg.eigvalsh(q(rho * (1 - 1e-3)))[0] < 0
    # the verifier accepts exactly the rho the dense oracle accepts (up to rounding level)
    assert lipsdp.verify_pair(prep, 0, 2, rho * (1 + 1e-6), t).accepted
    below = lipsdp.verify_pair(prep, 0, 2, rho * (1 - 1e-3), t)
    assert not below.accepted
    assert below.bound >= math.sqrt(rho), "an infeasible candidate's inflated value is still an upper bound"
    h = 1e-6
    for k, idx in [(0, 1), (0, 3), (1, 0), (1, 2)]:
        tp = [x.copy() for x in t]
        tm = [x.copy() for x in t]
        tp[k][idx] += h
        tm[k][idx] -= h
        fd = (lipsdp.rho_and_gradient(prep, tp, c)[0] - lipsdp.rho_and_gradient(prep, tm, c)[0]) / (2 * h)
        assert grads[k][idx] == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_wrong_multipliers_are_rejected() -> None:
    rng = np.random.default_rng(11)
    w = _net(rng, [5, 6, 6], classes=3)
    prep = lipsdp.prepare(w)
    rec = lipsdp.fast_recursion(prep)
    rho, t = lipsdp.fast_candidate(prep, rec, 0, 1)
    exact = _pattern_max(w, 0, 1) if sum(w.sizes) <= 12 else 0.0
    # too small a rho: the matrix inequality fails by far more than rounding
    bad = lipsdp.verify_pair(prep, 0, 1, rho * 0.25, t)
    assert not bad.accepted and bad.shortfall > 0
    assert bad.bound >= exact  # even then the inflated value is an upper bound (never used, but sound)
    # multipliers that break the slope constraint's sign, or T of the wrong shape
    neg = [x.copy() for x in t]
    neg[1][0] = -1.0
    assert lipsdp.verify_pair(prep, 0, 1, rho, neg).bound == math.inf
    assert not lipsdp.verify_pair(prep, 0, 1, rho, t[:1]).accepted
    # multipliers scaled down: the hidden block is no longer PSD
    small = [x * 0.01 for x in t]
    assert not lipsdp.verify_pair(prep, 0, 1, rho, small).accepted


def test_weight_error_bounds_enlarge_the_bound() -> None:
    rng = np.random.default_rng(5)
    w = _net(rng, [5, 6, 6], classes=3)
    noisy = lipsdp.ChainWeights(w.hidden, [1e-6 * np.abs(x) for x in w.hidden], w.last, 1e-6 * np.abs(w.last))
    out = []
    for ws in (w, noisy):
        prep = lipsdp.prepare(ws)
        rec = lipsdp.fast_recursion(prep)
        rho, t = lipsdp.fast_candidate(prep, rec, 0, 1)
        out.append(lipsdp.verify_pair(prep, 0, 1, rho, t))
    assert out[1].shortfall > out[0].shortfall
    assert out[1].bound > out[0].bound
