"""The float32 tier of the circulant conv bound (lipgraph.norms.stack_sv32, lipgraph.norms.conv_tiers) against
float64 oracles: the Gram allowance against the float64 product, the a-posteriori Cholesky allowance against
exact eigenvalues just above the trial value, frequencies at the maximum that must fall back to float64, and
whole convs against the SVD of every symbol (numpy's FFT) and the dense matrix run through onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lipgraph.norms import conv_fft, conv_tiers, stack_sv, stack_sv32
from lipgraph.norms.conv import ConvGeometry, circulant_grid, conv_circulant_bound, phase_kernel
from tests.norms.test_conv_gram import _fft_symbols, exact_norm

TIGHT = math.sqrt(1 + stack_sv.CHOLESKY_TOL) * (1 + 1e-9)


def _complex(rng, *shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize(("m", "n"), [(40, 70), (90, 50), (64, 300)])  # 300: blocked inner sums
def test_gram32_allowance_covers_the_float32_product(m, n):
    rng = np.random.default_rng(m + n)
    a = _complex(rng, 4, m, n) * rng.uniform(0.1, 10.0, size=(4, 1, 1))
    g32, err = stack_sv32.gram32(a.real.copy(), a.imag.copy())
    small = a if m <= n else np.conj(np.swapaxes(a, 1, 2))
    exact = small @ np.conj(np.swapaxes(small, 1, 2))  # float64: ~1e-13 relative, far below the allowance
    for i in range(4):
        dist = np.linalg.norm(g32[i].astype(np.complex128) - exact[i], 2)
        assert 0 < dist <= err[i] * (1 - 1e-6)  # a real rounding error, inside its allowance
        assert err[i] < 1e-3 * np.linalg.norm(exact[i], 2)  # an allowance, not a blanket
    assert np.all(np.imag(np.diagonal(g32, axis1=1, axis2=2)) == 0)  # exactly Hermitian


def _gram_with_top(rng, k, lam_top, spread=0.9):
    """A Hermitian k x k matrix with eigenvalues lam_top and others in [0, spread] (random eigenvectors)."""
    q, _ = np.linalg.qr(_complex(rng, k, k))
    lam = np.concatenate([[lam_top], rng.uniform(0.0, spread, k - 1)])
    return (q * lam) @ np.conj(q.T)


def test_float32_cholesky_bound_covers_a_maximum_just_above_the_trial_value():
    """mu (a float32 number) below lambda_max by less than float32 resolves: whenever the factorisation still
    completes, the bound it returns must be at least lambda_max (dropping every allowance makes this fail)."""
    rng = np.random.default_rng(0)
    successes = 0
    for trial in range(60):
        k = 16 + trial % 3 * 32
        g32 = _gram_with_top(rng, k, 1.0 + 1e-8).astype(np.complex64)
        lam = float(np.linalg.eigvalsh(g32.astype(np.complex128))[-1])
        if lam <= 1.0:
            continue  # the rounding to float32 moved the maximum below the trial value: not the case tested
        ok, bound = stack_sv32._factor32(g32[None], np.zeros(1), np.ones(1, dtype=np.float32), 1.0)
        if ok[0]:
            successes += 1
            assert bound[0] >= lam
    assert successes >= 3  # the case is reached: float32 does not resolve a 1e-9 gap


@pytest.mark.parametrize("k", [8, 40, 130])
def test_backward_error_and_collatz_terms_against_the_float64_residual(k):
    """The two a-posteriori ingredients: rho from Collatz-Wielandt is at least the exact rho(|R|^T |R|), and
    gamma_c rho covers the factorisation's residual R^H R - H computed exactly enough in float64."""
    from scipy.linalg import lapack

    rng = np.random.default_rng(k)
    h = (np.eye(k) * 1.001 - _gram_with_top(rng, k, 1.0)).astype(np.complex64)
    fac = h.copy()
    _, info = lapack.cpotrf(fac.T, lower=0, overwrite_a=1, clean=1)
    assert info == 0
    r = fac.T.astype(np.complex128)  # upper triangular: R^H R = conj(H) (the triangle read, see _factor32)
    rho = float(stack_sv32._collatz_rho(fac[None])[0])
    mod = np.abs(r)
    assert float(np.linalg.eigvalsh(mod.T @ mod)[-1]) <= rho <= 1.01 * float(np.linalg.eigvalsh(mod.T @ mod)[-1])
    residual = np.linalg.norm(np.conj(r.T) @ r - np.conj(h.astype(np.complex128)), 2)
    assert 0 < residual <= stack_sv32.gamma32(k + 1, complex_=True) * rho


def test_cholesky32_below_never_certifies_a_frequency_above_the_target():
    rng = np.random.default_rng(1)
    mats = [_gram_with_top(rng, 60, top) for top in (1.0 + 1e-6, 1.0 + 1e-4, 1.0 - 1e-6, 0.95, 0.5)]
    g = np.stack(mats)
    g32 = g.astype(np.complex64)
    err = np.array([float(np.linalg.norm(g32[i].astype(np.complex128) - g[i], 2)) * 1.01 for i in range(5)])
    ok, bound = stack_sv32.cholesky32_below(g32, err, 1.0)
    assert list(ok) == [False, False, False, True, True]  # 1 - 1e-6: within the float32 allowances
    lam = np.linalg.eigvalsh(g)[:, -1]
    assert np.all(bound[ok] >= lam[ok]) and np.all(bound[ok] <= 1.0)


def _direct_bound(monkeypatch, w, s, n, pad, tier: bool):
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: (0.0, 1.0))  # the direct path
    monkeypatch.setattr(conv_tiers, "TIER_MIN_SIDE", 32 if tier else 10**9)
    d = w.ndim - 2
    return conv_circulant_bound(w, 1, (s,) * d, (1,) * d, (pad,) * d, (pad,) * d, (n,) * d)


def _circulant_exact(w, s, n, pad):
    d = w.ndim - 2
    pk = phase_kernel(w.astype(np.float64), 1, (s,) * d, (1,) * d)
    geo = ConvGeometry((n,) * d, (s,) * d, (1,) * d, (pad,) * d, (pad,) * d)
    return float(np.linalg.svd(_fft_symbols(pk, circulant_grid(geo, w.shape[2:])), compute_uv=False)[:, 0].max())


@pytest.mark.parametrize(("shape", "s", "n"), [((48, 40, 3, 3), 1, 4), ((40, 20, 3, 3), 2, 8), ((36, 40, 5), 1, 9)])
def test_tiered_conv_bound_is_the_float64_value_and_bounds_the_onnxruntime_norm(monkeypatch, shape, s, n):
    rng = np.random.default_rng(sum(shape) + n)
    w = (rng.standard_normal(shape) / 10).astype(np.float32)
    d = w.ndim - 2
    pad = shape[-1] // 2
    counts = {}
    orig = conv_tiers.tiered_gram_bound

    def counting(*args):
        sq, c = orig(*args)
        counts.update(c)
        return sq, c

    monkeypatch.setattr(conv_fft, "tiered_gram_bound", counting)
    tiered = _direct_bound(monkeypatch, w, s, n, pad, tier=True)
    assert tiered.method.endswith("float32 tier") and counts["float32"] > 0  # the float32 tier was used
    plain = _direct_bound(monkeypatch, w, s, n, pad, tier=False)
    assert "float32" not in plain.method
    circ = _circulant_exact(w, s, n, pad)
    assert circ <= tiered.value <= circ * TIGHT
    assert abs(tiered.value / plain.value - 1) <= stack_sv.CHOLESKY_TOL
    exact = exact_norm("Conv", w, (1, shape[1]) + (n,) * d, pads=[pad] * 2 * d, strides=[s] * d)
    assert exact * (1 - 1e-9) <= tiered.value


def test_every_frequency_at_the_maximum_falls_back_to_float64(monkeypatch):
    """A kernel with only its centre tap: the symbol has the same singular values at every frequency, so no
    frequency can be shown below the maximum in float32; all go to float64 and the value is the exact norm."""
    rng = np.random.default_rng(3)
    w = np.zeros((40, 40, 3, 3), dtype=np.float32)
    w[:, :, 1, 1] = rng.standard_normal((40, 40)) / 10
    counts = {}
    orig = conv_tiers.tiered_gram_bound

    def counting(*args):
        sq, c = orig(*args)
        counts.update(c)
        return sq, c

    monkeypatch.setattr(conv_fft, "tiered_gram_bound", counting)
    nb = _direct_bound(monkeypatch, w, 1, 5, 1, tier=True)
    assert counts["float32"] == 0 and counts["float64"] == 20  # the half grid of 6 x 6
    exact = float(np.linalg.svd(w[:, :, 1, 1].astype(np.float64), compute_uv=False)[0])
    assert exact <= nb.value <= exact * TIGHT


def test_a_misranked_maximum_fails_in_float32_and_is_covered_in_float64(monkeypatch):
    """Estimates that put the true maximum last: its float32 certificate against the (too low) float64 value of
    the frequency ranked first must fail, and the float64 fallback must cover it (never the first value)."""
    rng = np.random.default_rng(5)
    w = (rng.standard_normal((40, 40, 3, 3)) / 10).astype(np.float32)
    plain = _direct_bound(monkeypatch, w, 1, 4, 1, tier=False)

    def upside_down(gram, steps):  # noqa: ANN001, ANN202 - estimates in the reverse order of the truth
        return -np.linalg.eigvalsh(gram.astype(np.complex128))[:, -1]

    monkeypatch.setattr(conv_tiers, "lanczos_top", upside_down)
    counts = {}
    orig = conv_tiers.tiered_gram_bound

    def counting(*args):
        sq, c = orig(*args)
        counts.update(c)
        return sq, c

    monkeypatch.setattr(conv_fft, "tiered_gram_bound", counting)
    tiered = _direct_bound(monkeypatch, w, 1, 4, 1, tier=True)
    circ = _circulant_exact(w, 1, 4, 1)
    assert counts["float64"] >= 2  # the first-ranked one and at least the true maximum
    assert circ <= tiered.value <= circ * TIGHT
    assert abs(tiered.value / plain.value - 1) <= stack_sv.CHOLESKY_TOL


def test_gram_kernel_path_in_many_small_chunks_still_bounds_the_maximum(monkeypatch):
    """Chunks of three frequencies (the bound so far is each next chunk's trial value): the maximum over all
    chunks is still covered, within the tolerance of the exact circulant value."""
    from lipgraph.norms import conv_gram

    rng = np.random.default_rng(8)
    w = (rng.standard_normal((30, 30, 3, 3)) / 10).astype(np.float32)
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: (1.0, 0.0))  # the autocorrelation path
    monkeypatch.setattr(conv_gram, "_GRAM_CHUNK_ENTRIES", 3 * 30 * 30)
    nb = conv_circulant_bound(w, 1, (1, 1), (1, 1), (1, 1), (1, 1), (9, 9))
    assert nb.method.endswith("Gram kernel")
    circ = _circulant_exact(w, 1, 9, 1)
    assert circ <= nb.value <= circ * TIGHT


def test_grouped_conv_on_the_float32_tier(monkeypatch):
    """Two groups (the stack is group-major): the bound covers the larger group's exact circulant value."""
    rng = np.random.default_rng(11)
    w = (rng.standard_normal((80, 40, 3, 3)) / 10).astype(np.float32)
    w[40:] *= 1.3  # the second group holds the maximum
    monkeypatch.setattr(conv_fft, "gram_kernel_cost", lambda shape, f: (0.0, 1.0))
    monkeypatch.setattr(conv_tiers, "TIER_MIN_SIDE", 32)
    nb = conv_circulant_bound(w, 2, (1, 1), (1, 1), (1, 1), (1, 1), (4, 4))
    assert nb.method.endswith("float32 tier")
    per_group = max(_circulant_exact(w[40 * i : 40 * (i + 1)], 1, 4, 1) for i in range(2))
    assert per_group <= nb.value <= per_group * TIGHT
    exact = exact_norm("Conv", w, (1, 80, 4, 4), pads=[1, 1, 1, 1], group=2)
    assert exact * (1 - 1e-9) <= nb.value
