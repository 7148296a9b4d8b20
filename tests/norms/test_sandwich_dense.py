"""Dense sandwich certificate (LBDN layers): the cheap skip of hopeless Lambda candidates.

Oracles: the explicit G and its float64 eigenvalues; Wang and Manchester's parameterisation
(``M = sqrt2 A^T Psi``, ``N = sqrt2 Psi^-1 B`` with ``A A^T + B B^T = I``), whose certificate is 1.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.norms.sandwich import gap_lower_estimate, lbdn_lambda_candidates, sandwich_certificate


def _lbdn(h: int, n_in: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n_out + n_in, h)))  # orthonormal columns (needs n_out + n_in >= h)
    a, b = q[:n_out].T, q[n_out:].T  # (h, n_out), (h, n_in): A A^T + B B^T = Q^T Q = I
    psi = np.exp(rng.uniform(-1.0, 1.0, h))
    return np.sqrt(2.0) * a.T * psi[None, :], np.sqrt(2.0) * b / psi[:, None]  # M (n_out, h), N (h, n_in)


@pytest.mark.parametrize("seed", range(4))
def test_lower_estimate_never_exceeds_the_top_eigenvalue(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h = 12
    m, n = rng.standard_normal((5, h)), rng.standard_normal((h, 7))
    lam = np.exp(rng.uniform(-2.0, 2.0, h))
    g = lam[:, None] * (n @ n.T) * lam[None, :] + m.T @ m - 2.0 * np.diag(lam)
    top = float(np.linalg.eigvalsh(g)[-1])
    est = gap_lower_estimate(m, n, lam)
    assert est <= top + 1e-9 * max(1.0, abs(top))
    assert est >= top - 0.05 * max(1.0, abs(top))  # 30 power steps get close on these sizes


@pytest.mark.parametrize("seed", range(3))
def test_family_layers_keep_their_certificate_with_the_skip(seed: int) -> None:
    m, n = _lbdn(h=20, n_in=15, n_out=9, seed=seed)
    n_norm = float(np.linalg.norm(n, 2)) * (1 + 1e-12)
    generic = float(np.linalg.norm(m, 2)) * n_norm
    cert, gap = sandwich_certificate(m, n, n_norm, worth_below=generic)
    assert cert <= 1.0 + 1e-9 < generic
    assert abs(gap) < 1e-8


def test_generic_layer_skips_and_without_the_skip_would_not_win() -> None:
    rng = np.random.default_rng(5)
    h = 60
    n = rng.standard_normal((h, h)) * np.sqrt(2.0 / h)
    m = rng.standard_normal((h, h)) * np.sqrt(2.0 / h)
    n_norm = float(np.linalg.norm(n, 2)) * (1 + 1e-12)
    generic = float(np.linalg.norm(m, 2)) * n_norm
    assert sandwich_certificate(m, n, n_norm, worth_below=generic) == (np.inf, np.inf)
    # the skip only dropped candidates that lose: certified in full, each is above the product
    full, _ = sandwich_certificate(m, n, n_norm)
    assert full >= generic
    assert len(lbdn_lambda_candidates(m, n)) >= 1
