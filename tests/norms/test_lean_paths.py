"""The leaner paths of the conv certificates against oracles: the moduli allowance of the float32 Collatz-Wielandt
bound (numpy's complex ``absolute`` against float64 moduli of the float32 parts), the bound of selected factors
against the bound of their copies, the float32 certificate on rows of a stack against the one on the copied rows,
and the Lanczos run that stops once its top Ritz values are stable against the full run and ``eigvalsh``."""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.norms import stack_sv, stack_sv32
from lipgraph.norms.lapack import cholesky_inplace

U32 = 2.0**-24


def _adversarial_parts(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 real and imaginary parts where moduli are hardest: ties, ratios near 1 and near 2^-12 (where
    ``r^2`` stops mattering), one part zero, subnormals, values near float32's largest, random mantissas."""
    n = 200_000
    mant = rng.uniform(1.0, 2.0, n)
    re = mant * 2.0 ** rng.integers(-120, 120, n)
    ratio = np.concatenate(
        [
            np.ones(n // 8),
            1.0 - rng.uniform(0, 1e-6, n // 8),
            rng.uniform(0.0, 1.0, n // 4),
            2.0 ** rng.uniform(-14, -10, n // 8),
            np.zeros(n // 8),
            rng.uniform(0.4, 0.45, n - n // 8 * 4 - n // 4),  # r^2 ~ 0.2: the sum 1 + r^2 rounds
        ]
    )
    im = re * ratio * rng.choice([-1.0, 1.0], n)
    re = np.concatenate([re, 1e-44 * rng.uniform(1, 100, 1000), 3e38 * rng.uniform(0.5, 1.1, 1000)])
    im = np.concatenate([im, 1e-44 * rng.uniform(1, 100, 1000), 3e38 * rng.uniform(0.5, 1.1, 1000)])
    return re.astype(np.float32), im.astype(np.float32)


def test_complex64_moduli_are_within_the_allowance_of_the_collatz_bound():
    """``|z| <= b (1 + 4u) + 1e-18`` (the allowance _collatz_rho charges) for numpy's complex64 ``absolute``,
    checked against float64 moduli of the exact float32 parts (float64 ``hypot``: within 2^-52 relatively,
    far below the float32 errors measured). The rounding is real: the largest error is above u/2."""
    re, im = _adversarial_parts(np.random.default_rng(3))
    with np.errstate(over="ignore"):
        b = np.abs((re + 1j * im).astype(np.complex64)).astype(np.float64)
    exact = np.hypot(re.astype(np.float64), im.astype(np.float64))
    finite = np.isfinite(b)
    assert finite.sum() > 200_000  # the moduli above float32's largest overflow to inf (covered separately)
    rel = np.abs(exact[finite] - b[finite]) / np.maximum(exact[finite], 1e-300)
    big = exact[finite] > 1e-30
    print(f"largest relative error of the moduli: {rel[big].max() / U32:.3f} u")
    assert rel[big].max() > 0.5 * U32  # a rounding error is there to be covered
    assert np.all(exact[finite] <= b[finite] * (1 + 4 * U32) + 1e-18)
    assert np.all(b[~finite] == np.inf)  # an overflowed modulus reads inf: the bound is inf, never too low


def _factor_stack(rng: np.random.Generator, f: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = (rng.standard_normal((f, k, k)) + 1j * rng.standard_normal((f, k, k))) / k
    g = (a @ np.conj(np.swapaxes(a, 1, 2))).astype(np.complex64)
    top = np.linalg.eigvalsh(g.astype(np.complex128))[:, -1]
    mu = np.float32(1.2 * float(top.max()))
    h = (np.eye(k, dtype=np.complex64) * mu - g).astype(np.complex64)
    h[2] = np.eye(k, dtype=np.complex64) * -1.0  # one that fails
    ok = cholesky_inplace(h, clean=True)
    return h, ok


@pytest.mark.parametrize("k", [9, 64])
def test_collatz_bound_of_selected_factors_equals_the_bound_of_their_copies(k):
    h, ok = _factor_stack(np.random.default_rng(k), 6, k)
    assert not ok[2] and ok.sum() == 5
    got = stack_sv32._collatz_rho(h, ok)
    want = stack_sv32._collatz_rho(np.ascontiguousarray(h[ok]))
    assert np.array_equal(got, want)
    for j, i in enumerate(np.flatnonzero(ok)):  # and each is above the float64 oracle of its moduli
        mod = np.abs(h[i].astype(np.complex128))
        assert float(np.linalg.eigvalsh(mod.T @ mod)[-1]) <= got[j]


def test_float32_certificate_on_rows_equals_the_certificate_on_the_copied_rows():
    rng = np.random.default_rng(5)
    f, k = 9, 48
    a = (rng.standard_normal((f, k, 60)) + 1j * rng.standard_normal((f, k, 60))) * rng.uniform(0.5, 1.5, (f, 1, 1))
    g32, err = stack_sv32.gram32(a.real.copy(), a.imag.copy())
    exact = np.linalg.eigvalsh(a @ np.conj(np.swapaxes(a, 1, 2)))[:, -1]
    target = float(np.sort(exact)[-3]) * 1.001  # the top two are above it: they must not be certified
    rows = np.array([8, 0, 3, 7, 5, 1])
    ok, bound = stack_sv32.cholesky32_below(g32, err[rows], target, rows=rows)
    ok_copy, bound_copy = stack_sv32.cholesky32_below(g32[rows].copy(), err[rows], target)
    assert np.array_equal(ok, ok_copy) and np.array_equal(bound, bound_copy)
    assert np.all(exact[rows][ok] <= bound[ok])  # sound against the float64 eigenvalues
    assert not np.any(ok & (exact[rows] > target))
    assert ok.sum() >= 2  # the certificate is reached


def _hermitian_with_spectrum(rng: np.random.Generator, eigs: np.ndarray) -> np.ndarray:
    k = eigs.size
    q, _ = np.linalg.qr(rng.standard_normal((k, k)) + 1j * rng.standard_normal((k, k)))
    return (q * eigs) @ np.conj(q.T)


def _spectrum(kind: str, rng: np.random.Generator, k: int) -> np.ndarray:
    if kind == "dense top":  # eigenvalues crowd towards the top: the top Ritz value converges slowly
        return 1e3 * (1.0 - (np.arange(k)[::-1] / k) ** 0.5)
    eigs = np.sort(rng.uniform(0.0, 1.0, k))
    eigs[-1] = eigs[-2] + 0.5 if kind == "gap" else eigs[-2]  # "tie": a repeated top eigenvalue
    return 1e3 * eigs


@pytest.mark.parametrize("kind", ["gap", "dense top", "tie"])
def test_lanczos_that_stops_early_matches_the_full_run(kind, monkeypatch):
    """Top Ritz values of the early-stopping run against the run without the stop (rtol 0) and eigvalsh. On the
    dense spectrum a stop at a loose tolerance (1e-4) moves the estimate by 7e-8: this test sees that."""
    rng = np.random.default_rng(17)
    k = 200
    full = np.stack([_hermitian_with_spectrum(rng, _spectrum(kind, rng, k)) for _ in range(3)])
    early = stack_sv.lanczos_top(full)
    monkeypatch.setattr(stack_sv, "LANCZOS_RTOL", 0.0)
    plain = stack_sv.lanczos_top(full)
    exact = np.linalg.eigvalsh(full)[:, -1]
    assert np.all(np.abs(early - plain) <= 1e-11 * exact)
    assert np.all(early <= exact * (1 + 1e-13))  # Ritz values are below lambda_max (up to rounding)
    assert np.all(np.abs(plain - exact) <= 0.05 * exact)  # an estimate of the top, not of anything else
