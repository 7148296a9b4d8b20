"""Dense spectral norms against the exact float64 SVD (SPEC sec. 7, 9).

Gram iteration is the certified path for matrices too large for an SVD; it must be an upper bound
at every iteration count, on flat spectra (its worst case), rank-deficient and badly scaled
matrices. Power iteration is only ever a lower estimate.
"""

from __future__ import annotations

import numpy as np
import pytest

import lipgraph.norms.dense as dense
from lipgraph.norms import inflate
from lipgraph.norms.dense import gram_iteration, power_iteration_lower, spectral_norm


def _cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    q1, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    q2, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    flat = q1[:, :40] @ np.diag(1 - 1e-3 * rng.random(40)) @ q2  # 40 nearly equal singular values
    low_rank = rng.standard_normal((50, 3)) @ rng.standard_normal((3, 70))
    return [
        ("gaussian tall", rng.standard_normal((120, 30))),
        ("gaussian wide", rng.standard_normal((20, 90))),
        ("flat spectrum", flat),
        ("rank 3", low_rank),
        ("tiny scale", rng.standard_normal((30, 30)) * 1e-150),
        ("huge scale", rng.standard_normal((30, 30)) * 1e150),
        ("one entry", np.eye(1, 25) * -3.0),
    ]


def _exact(a: np.ndarray) -> float:
    return float(np.linalg.svd(a, compute_uv=False)[0])


@pytest.mark.parametrize("name, a", _cases(), ids=[c[0] for c in _cases()])
@pytest.mark.parametrize("t", [1, 3, 6, 10])
def test_gram_iteration_is_an_upper_bound(name: str, a: np.ndarray, t: int) -> None:
    exact = _exact(a)
    nb = gram_iteration(a, iterations=t)
    assert nb.value >= exact
    # Schatten-p overestimate: at most rank^(1/2^(t+1)) (plus rounding), so it tightens with t.
    rank = min(a.shape)
    assert nb.value <= exact * rank ** (1 / 2 ** (t + 1)) * (1 + 1e-9)


def test_gram_iteration_converges_to_the_norm() -> None:
    a = _cases()[0][1]
    assert gram_iteration(a, iterations=10).value == pytest.approx(_exact(a), rel=1e-9)


def test_gram_iteration_of_zero_is_zero() -> None:
    assert gram_iteration(np.zeros((5, 7))).value == 0.0


def test_large_matrices_take_the_gram_path(monkeypatch: pytest.MonkeyPatch) -> None:
    a = _cases()[1][1]
    monkeypatch.setattr(dense, "_SVD_LIMIT", 4)
    nb = spectral_norm(a)
    assert nb.method.startswith("Gram iteration")
    assert nb.value >= _exact(a)


@pytest.mark.parametrize("name, a", _cases(), ids=[c[0] for c in _cases()])
def test_svd_path_is_inflated_above_the_computed_value(name: str, a: np.ndarray) -> None:
    nb = spectral_norm(a)
    assert nb.value > _exact(a) or _exact(a) == 0
    assert nb.value <= _exact(a) * (1 + 1e-10)
    assert inflate(1.0, 10) > 1.0


@pytest.mark.parametrize("name, a", _cases()[:4], ids=[c[0] for c in _cases()[:4]])
def test_power_iteration_is_only_a_lower_estimate(name: str, a: np.ndarray) -> None:
    assert power_iteration_lower(a, steps=50) <= _exact(a) * (1 + 1e-12)
