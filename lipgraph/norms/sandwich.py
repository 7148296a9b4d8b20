"""Certificates for sandwich blocks ``M D N`` (D diagonal, entries in [0, 1]), with rigorous rounding.

* Residual: ``J = I - Q^T S D Q`` with ``S >= 0`` diagonal is symmetric with
  ``0 <= Q^T S D Q <= Q^T S Q`` (Loewner order), so its spectrum lies in
  ``[1 - ||S^(1/2) Q||^2, 1]`` and ``||J|| <= max(1, ||S^(1/2) Q||^2 - 1)``. A second operator
  that is not exactly ``Q^T S`` adds ``||P - Q^T S|| ||Q||`` (triangle inequality, ``||D|| <= 1``).
* Plain (LBDN): for any positive diagonal Lambda, with ``G = Lambda N N^T Lambda + M^T M - 2 Lambda``,
  ``||M D N||^2 <= 1 + max(0, lambda_max(G)) ||N||^2``. Proof: let ``u = N x`` and ``v = D u``.
  Since D is diagonal with entries in [0, 1], ``v^T Lambda v <= v^T Lambda u`` (each term is
  ``lambda_i d_i (1 - d_i) u_i^2 >= 0``). Then ``||M v||^2 = v^T G v - ||N^T Lambda v||^2 + 2 v^T Lambda v
  <= lambda_max(G)^+ ||v||^2 + (2 (N^T Lambda v)^T x - ||N^T Lambda v||^2) <= lambda_max(G)^+ ||u||^2
  + ||x||^2``, using ``2 a^T x - ||a||^2 <= ||x||^2``. With ``||u|| <= ||N|| ||x||`` the claim follows.
  Wang and Manchester's layers have ``M = sqrt2 A^T Psi``, ``N = sqrt2 Psi^-1 B`` with
  ``A A^T + B B^T = I``: then ``G = 0`` at ``Lambda = Psi^2``.

Lambda is found, not given: any positive diagonal is sound, so a heuristic choice only affects
tightness. For LBDN, the off-diagonal entries of ``G = 0`` say
``lambda_i lambda_j (N N^T)_ij = -(M^T M)_ij``: a linear least-squares problem in ``log lambda``.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.norms import EPS64
from lipgraph.norms.rounding import gamma

_U = EPS64


def _gamma(k: int) -> float:
    return gamma(k, _U)


def lambda_max_upper(g: np.ndarray, entry_err: float = 0.0) -> float:
    """Upper bound of ``lambda_max`` of the real symmetric matrix that ``g`` approximates within
    ``entry_err`` in Frobenius norm: eigvalsh plus its backward error (``4 n u ||G||_F``, the same
    convention as the SVD allowance) plus ``entry_err`` (Weyl)."""
    g = np.asarray(g, dtype=np.float64)
    g = (g + g.T) / 2.0  # symmetrising moves each entry by at most u |g_ij|: covered below
    n = g.shape[0]
    fro = float(np.linalg.norm(g))
    lam = float(np.linalg.eigvalsh(g)[-1])
    allowance = (4 * n + 2) * _U * fro * (1 + 4 * _U) + entry_err
    return float(np.nextafter(lam + allowance * (1 + 4 * _U), np.inf))


def lbdn_gap(
    m: np.ndarray, n: np.ndarray, lam: np.ndarray, m_err: float = 0.0, m_norm: float | None = None
) -> float:
    """Upper bound of ``lambda_max(Lambda N N^T Lambda + M^T M - 2 Lambda)`` for the exact M.

    ``m_err`` bounds ``||M_true - m||_2``; it adds ``2 ||m|| m_err + m_err^2`` (Weyl), with ``m_norm``
    an upper bound of ``||m||_2`` when the caller has one (else an SVD here). The float products add
    ``gamma_k`` times the same products of absolute values (Higham, sec. 3.5), whose Frobenius norm is
    at most ``||ln||_F^2 + ||m||_F^2 + 2 ||lambda||`` (``|| |A| |A|^T ||_F <= ||A||_F^2``): no second
    pair of h x h products.
    """
    ln = lam[:, None] * n  # one rounding per entry
    g = ln @ ln.T + m.T @ m - 2.0 * np.diag(lam)
    abs_fro = float(np.sum(ln * ln)) + float(np.sum(m * m)) + 2.0 * float(np.linalg.norm(lam))
    k = max(n.shape[1], m.shape[0]) + 6
    err = _gamma(k) * abs_fro * (1 + 4 * _U) * 1.01
    if m_err:
        if m_norm is None:
            m_norm = float(np.linalg.svd(m, compute_uv=False)[0]) * (1 + 8 * max(m.shape) * _U)
        err += (2 * m_norm + m_err) * m_err * (1 + 4 * _U)
    return lambda_max_upper(g, err)


def lbdn_lambda_candidates(m: np.ndarray, n: np.ndarray) -> list[np.ndarray]:
    """Positive diagonals to try: the log-least-squares solution of the off-diagonal equations, and
    the row balancing ``lambda_i = ||M e_i|| / ||N_i||``."""
    h = n.shape[0]
    rn = np.linalg.norm(n, axis=1)
    cm = np.linalg.norm(m, axis=0)
    ok = (rn > 0) & (cm > 0)
    base = np.ones(h)
    base[ok] = cm[ok] / rn[ok]
    out = [base]
    k, ll = n @ n.T, m.T @ m
    off = ~np.eye(h, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((k != 0) & off, -ll / np.where(k != 0, k, 1.0), -1.0)
    good = (ratio > 0) & np.isfinite(ratio)
    if np.count_nonzero(good) >= 2 * h:
        # Weighted least squares for y = log lambda over the pairs: y_i + y_j = log ratio_ij, weight
        # w_ij = sqrt(|k_ij l_ij|). Normal equations (h x h, never the pairs x h matrix):
        # (diag(sum_j w_ij^2) + W2) y = sum_j w_ij^2 log ratio_ij.
        w2 = np.where(good, np.abs(k * ll), 0.0)
        logr = np.where(good, np.log(np.where(good, ratio, 1.0)), 0.0)
        normal = np.diag(w2.sum(axis=1)) + w2
        rhs = (w2 * logr).sum(axis=1)
        sol = _solve_psd(normal, rhs)
        if np.all(np.isfinite(sol)) and np.max(np.abs(sol)) < 600:
            out.append(np.exp(sol))
    return out


def _solve_psd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the normal equations (symmetric, positive semidefinite: a signless Laplacian plus its
    degrees) by Cholesky, a least-squares solve only when they are singular. Only tightness depends
    on the answer: any positive lambda gives a sound certificate."""
    import scipy.linalg

    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, check_finite=False), b, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return np.linalg.lstsq(a, b, rcond=None)[0]


def gap_lower_estimate(m: np.ndarray, n: np.ndarray, lam: np.ndarray, iters: int = 30) -> float:
    """A Rayleigh quotient of ``G = Lambda N N^T Lambda + M^T M - 2 Lambda``: at most ``lambda_max(G)``.

    Power iteration on ``G + 2 max(lambda) I`` (positive semidefinite, since ``G >= -2 Lambda``), with
    ``G v`` formed from M and N (never G itself, an h x h product). Used only to skip a candidate
    that cannot beat the product of norms; it never enters a bound.
    """
    shift = 2.0 * float(np.max(lam))
    v = np.random.default_rng(0).standard_normal(lam.size)

    def g_times(x: np.ndarray) -> np.ndarray:
        return lam * (n @ (n.T @ (lam * x))) + m.T @ (m @ x) - 2.0 * lam * x

    rq = -math.inf
    for _ in range(iters):
        nv = float(np.linalg.norm(v))
        if not nv > 0 or not math.isfinite(nv):
            break
        v = v / nv
        gv = g_times(v)
        rq = max(rq, float(v @ gv))
        v = gv + shift * v
    return rq


def sandwich_certificate(
    m: np.ndarray,
    n: np.ndarray,
    n_norm: float,
    m_err: float = 0.0,
    worth_below: float = math.inf,
    m_norm: float | None = None,
) -> tuple[float, float]:
    """(bound of ``max_D ||M D N||``, the gap ``lambda_max(G)`` used), the best over the candidates.

    ``worth_below``: a bound already known (the product of norms). A candidate whose gap is shown,
    cheaply, to give no less is not certified (the eigenvalue bound of G costs several h x h
    products: 78 s of a 4096-wide MLP's analysis went there); (inf, inf) when none is worth it.
    ``m_norm``: an upper bound of ``||m||_2`` (spares an SVD when ``m_err > 0``).
    """
    best_gap = math.inf
    useful_gap = (worth_below * worth_below - 1.0) / (n_norm * n_norm) if n_norm > 0 else math.inf
    if useful_gap <= 0:
        return math.inf, math.inf
    for lam in lbdn_lambda_candidates(m, n):
        if math.isfinite(useful_gap) and gap_lower_estimate(m, n, lam) >= useful_gap * (1 + 1e-6):
            continue
        best_gap = min(best_gap, lbdn_gap(m, n, lam, m_err, m_norm))
    if not math.isfinite(best_gap):
        return math.inf, math.inf
    return certificate_from_gap(best_gap, n_norm), best_gap


def certificate_from_gap(gap: float, n_norm: float) -> float:
    """``sqrt(1 + max(0, gap) ||N||^2)`` rounded up (gap >= lambda_max(G), n_norm >= ||N||)."""
    sq = 1.0 + max(0.0, gap) * n_norm * n_norm
    return float(np.nextafter(math.sqrt(sq * (1 + 4 * _U)) * (1 + 2 * _U), np.inf))
