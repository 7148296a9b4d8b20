"""Per-class-pair Lipschitz bounds of a chain of (affine, slope-restricted activation) layers.

The network is ``x_k = phi(W_k x_{k-1} + b_k)`` for ``k = 1..m`` (hidden layers, every activation
slope-restricted in [0, 1], e.g. ReLU) followed by the logits ``A x_m + b``. For a class pair
``(i, j)`` with ``c = a_i - a_j`` we bound the Lipschitz constant of ``F_i - F_j = c^T x_m + const``
with the LipSDP-neuron certificate (Fazlyab et al., NeurIPS 2019): per neuron, the increments obey
``dx (dz - dx) >= 0`` (slope in [0, 1]), so for diagonal ``T_k >= 0`` and ``rho > 0``

    rho ||dx_0||^2 - (c^T dx_m)^2 - sum_k 2 dx_k^T T_k (W_k dx_{k-1} - dx_k)  >= 0 for all dx

implies ``|c^T dx_m| <= sqrt(rho) ||dx_0||``. Eliminating ``dx_0`` (a Schur complement), the form
is nonnegative iff the hidden-size matrix

    S(rho, T) = H(T) - T_1 G T_1 / rho,   G = W_1 W_1^T,

is PSD, where ``H`` has diagonal blocks ``2 T_k`` (the last one minus ``c c^T``) and off-diagonal
blocks ``-T_k W_k`` (k >= 2). ``S`` has the size of the hidden layers only, whatever the input size.

**Sound whatever the solver.** :func:`verify_pair` takes any candidate ``(rho, T)`` and proves
``S_real >= -mu I`` (real arithmetic, true weights) with a floating-point Cholesky factorisation and
Higham's backward-error bound (Accuracy and Stability of Numerical Algorithms, 2nd ed., Thm 10.3),
plus explicit bounds on every rounding made while forming ``S`` and on the weight composition
error. Then ``(c^T dx_m)^2 <= rho ||dx_0||^2 + mu sum_k ||dx_k||^2 <= (rho + mu sum_k P_k^2) ||dx_0||^2``
with ``P_k`` an upper bound of ``||W_k ... W_1||_2``, so an inaccurate candidate only makes the bound
larger (and a wrong one is rejected: its bound is worse than the cheap one, which is kept).

**Candidates.** :func:`fast_pair_bounds` is the closed-form layer-by-layer choice of ECLipsE-Fast
(Xu & Sivaranjani, NeurIPS 2024) with scalar ``T_k``; the layer recursion does not depend on the pair,
so all pairs cost one recursion plus one quadratic form ``c^T S_m^{-1} c`` each. :func:`rho_and_gradient`
gives ``rho*(T)`` (the least feasible ``rho``, convex in ``T``: a partial minimum of a linear function
over a convex set), equal to ``lambda_max(P^1/2 T_1 G T_1 P^1/2)`` with ``P = [H^-1]_11``, and its
gradient from the maximising increments (Danskin's theorem): ``d rho / d t_{k,n} = 2 dx_{k,n} (W_k
dx_{k-1} - dx_k)_n``; :mod:`lipgraph.norms.lipsdp_refine` minimises it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lipgraph.norms import EPS64
from lipgraph.norms.rounding import gamma

_SAFE = 1.0 + 1e-6  # inflation of a norm computed in float64 (relative error <= n u << 1e-6 for n < 1e9)
_TINY = 1e-280  # absolute allowance per entry for underflow in the factorisation


@dataclass
class ChainWeights:
    """The linear maps of a chain, float64, with entrywise error bounds against the real maps.

    ``hidden[k]`` is ``W_{k+1}`` (rows = outputs); ``hidden_err[k] >= |W_real - W|`` entrywise
    (a scalar 0 when exact); ``last`` is the logit matrix ``A`` (K x m_last) and ``last_err`` its bound.
    """

    hidden: list[np.ndarray]
    hidden_err: list[np.ndarray | float]
    last: np.ndarray
    last_err: np.ndarray | float

    def __post_init__(self) -> None:
        if not self.hidden:
            raise ValueError("a chain needs at least one hidden layer")
        for a, b in zip(self.hidden[1:], self.hidden[:-1], strict=False):
            if a.shape[1] != b.shape[0]:
                raise ValueError("hidden layer shapes do not chain")
        if self.last.shape[1] != self.hidden[-1].shape[0]:
            raise ValueError("the logit matrix does not fit the last hidden layer")

    @property
    def sizes(self) -> list[int]:
        return [int(w.shape[0]) for w in self.hidden]


@dataclass
class Prepared:
    """Pair-independent quantities, computed once per chain."""

    weights: ChainWeights
    gram: np.ndarray  # fl(W_1 W_1^T)
    gram_err: np.ndarray  # entrywise bound of |G_real - gram|
    prefix_norms: list[float]  # P_k >= ||W_k ... W_1||_2 (real), k = 1..m
    offsets: list[int]  # start of each hidden block in S


@dataclass
class PairResult:
    bound: float  # sound upper bound of the Lipschitz constant of F_i - F_j (inf when rejected)
    rho: float
    shortfall: float  # mu: the proven S_real >= -mu I
    accepted: bool  # the candidate was (numerically) feasible: mu is at rounding level


def _gamma(n: int) -> float:
    return gamma(n, EPS64)


def _up(x: float) -> float:
    return float(np.nextafter(x, np.inf))


def _norm_up(a: np.ndarray | float) -> float:
    """Upper bound of the Frobenius norm of ``a`` (hence of its spectral norm)."""
    if np.isscalar(a):
        return abs(float(a))  # type: ignore[arg-type]
    return _up(float(np.linalg.norm(a)) * _SAFE)


def prepare(weights: ChainWeights) -> Prepared:
    """The Gram matrix of the first layer (with its error bound) and the prefix-product norms."""
    from lipgraph.norms.dense import spectral_norm

    w1 = weights.hidden[0]
    e1 = weights.hidden_err[0]
    aw = np.abs(w1)
    gram = w1 @ w1.T
    gram = 0.5 * (gram + gram.T)  # exact symmetrisation of a matrix whose entries differ only by rounding
    err = _gamma(w1.shape[1] + 2) * (aw @ aw.T)
    if not np.isscalar(e1) or float(e1) != 0.0:
        ee = np.broadcast_to(np.asarray(e1, dtype=np.float64), w1.shape)
        err = err + ee @ aw.T + aw @ ee.T + ee @ ee.T
    err = err * (1.0 + _gamma(w1.shape[1] + 4))  # the error terms' own rounding (all nonnegative sums)
    norms: list[float] = []
    acc = 1.0
    for w, e in zip(weights.hidden, weights.hidden_err, strict=True):
        nb = spectral_norm(w).value + _norm_up(e)
        acc = _up(acc * nb)
        norms.append(acc)
    offsets = [0]
    for s in weights.sizes[:-1]:
        offsets.append(offsets[-1] + s)
    return Prepared(weights, gram, err, norms, offsets)


def pair_vector(weights: ChainWeights, i: int, j: int) -> tuple[np.ndarray, float]:
    """``c = a_i - a_j`` in float64 and an upper bound of ``||c_real - c||_2``."""
    a = weights.last
    c = a[i] - a[j]
    e = weights.last_err
    err = EPS64 * np.abs(c)
    if not np.isscalar(e) or float(e) != 0.0:
        ee = np.broadcast_to(np.asarray(e, dtype=np.float64), a.shape)
        err = err + ee[i] + ee[j]
    return c, _norm_up(err * (1.0 + 4 * EPS64))


def _hidden_matrix(prep: Prepared, t: list[np.ndarray], c: np.ndarray) -> np.ndarray:
    """H(T): diagonal blocks 2 T_k (the last minus c c^T), off-diagonal blocks -T_k W_k."""
    sizes = prep.weights.sizes
    n = sum(sizes)
    h = np.zeros((n, n))
    off = prep.offsets
    for k, tk in enumerate(t):
        idx = np.arange(off[k], off[k] + sizes[k])
        h[idx, idx] = 2.0 * tk
        if k >= 1:
            blk = -(tk[:, None] * prep.weights.hidden[k])
            h[off[k] : off[k] + sizes[k], off[k - 1] : off[k - 1] + sizes[k - 1]] = blk
            h[off[k - 1] : off[k - 1] + sizes[k - 1], off[k] : off[k] + sizes[k]] = blk.T
    lo = off[-1]
    h[lo:, lo:] -= np.outer(c, c)
    return h


def verify_pair(prep: Prepared, i: int, j: int, rho: float, t: list[np.ndarray]) -> PairResult:
    """A sound bound of the pair's Lipschitz constant from a candidate ``(rho, T)`` (any source).

    Builds ``S = H(T) - T_1 G T_1 / rho`` in float64, bounds ``||S - S_real||_2`` by the rounding of
    every step and the weights' own error, and proves ``lambda_min(S) >= -(shift + gamma_{n+1}
    ||L||_F^2 + u max S_ii)`` from a completed Cholesky factorisation ``L`` of ``fl(S + shift I)``.
    """
    sizes = prep.weights.sizes
    if not (rho > 0 and math.isfinite(rho)) or len(t) != len(sizes):
        return PairResult(math.inf, rho, math.inf, False)
    for tk, s in zip(t, sizes, strict=True):
        if tk.shape != (s,) or not np.all(np.isfinite(tk)) or np.any(tk < 0):
            return PairResult(math.inf, rho, math.inf, False)  # T must be diagonal and >= 0
    c, c_err = pair_vector(prep.weights, i, j)
    s_mat = _hidden_matrix(prep, t, c)
    t1 = t[0]
    m1 = sizes[0]
    tgt = (t1[:, None] * prep.gram * t1[None, :]) / rho
    h_norm = _norm_up(s_mat)  # before the subtraction: with one hidden layer a block gets two of them
    s_mat[:m1, :m1] -= tgt
    # ||S_hat - S_real||_2 <= sum of the norms of the error of each term (they add entrywise)
    err = 0.0
    # T_1 G T_1 / rho: three roundings per entry plus the Gram error
    err += _norm_up(tgt) * 4 * EPS64 * 1.01
    err += _norm_up((t1[:, None] * prep.gram_err * t1[None, :]) / rho) * (1.0 + 8 * EPS64)
    # c c^T: the outer product's rounding plus the error of c
    cn = _norm_up(c)
    err += 2.0 * cn * c_err + c_err * c_err + 2.0 * EPS64 * cn * cn
    # off-diagonal -T_k W_k: the product's rounding and the weights' error (each block once: ||[0 F^T; F 0]|| = ||F||)
    for k in range(1, len(sizes)):
        w = prep.weights.hidden[k]
        err += EPS64 * _norm_up(t[k][:, None] * w)
        e = prep.weights.hidden_err[k]
        if not np.isscalar(e) or float(e) != 0.0:
            err += _norm_up(t[k][:, None] * np.broadcast_to(np.asarray(e, dtype=np.float64), w.shape))
    # the subtractions that formed each entry of S: at most two roundings, each relative to the
    # entry before or after the last subtraction
    err += EPS64 * (_norm_up(s_mat) + h_norm) * 2.0
    err = _up(err * _SAFE)
    low = _lambda_min_lower(s_mat)
    if low is None:
        return PairResult(math.inf, rho, math.inf, False)
    mu = max(0.0, _up(err - low))  # S_real >= (low - err) I
    grow = sum(p * p for p in prep.prefix_norms)
    bound_sq = _up(_up(rho) + _up(mu * _up(grow * _SAFE)))
    bound = _up(math.sqrt(bound_sq) * (1.0 + 2 * EPS64))
    accepted = mu <= 1e-9 * rho
    return PairResult(bound, rho, mu, accepted)


def _lambda_min_lower(s_mat: np.ndarray, attempts: int = 4) -> float | None:
    """A rigorous lower bound of the smallest eigenvalue of the float64 symmetric matrix ``s_mat``.

    Tries ``shift = 0`` first, then a shift from an eigenvalue estimate, doubled on failure.
    """
    n = s_mat.shape[0]
    gamma = _gamma(n + 4)  # n + 1 (Higham) plus slack for a blocked factorisation's extra roundings
    scale = float(np.max(np.abs(np.diag(s_mat)))) if n else 0.0
    shift = 0.0
    for attempt in range(attempts):
        a = s_mat + shift * np.eye(n) if shift else s_mat
        try:
            chol = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            chol = None
        if chol is not None and np.all(np.isfinite(chol)):
            fro2 = _up(float(np.sum(chol * chol)) * _SAFE)
            diag_round = EPS64 * float(np.max(np.abs(np.diag(a)))) if shift else 0.0
            return -_up(shift + gamma * fro2 + diag_round + _TINY * n * n)
        if attempt == 0:
            est = float(np.linalg.eigvalsh(s_mat)[0])
            shift = max(-est, 0.0) * 1.01 + 4 * n * EPS64 * max(scale, 1e-300)
        else:
            shift *= 4.0
    return None


# --- candidates -------------------------------------------------------------------------------


@dataclass
class FastRecursion:
    """ECLipsE-Fast layer recursion with scalar multipliers (pair independent): ``S_m`` and ``t_k``."""

    scalars: list[float]
    s_last: np.ndarray  # S_m for rho = 1
    s_last_chol: np.ndarray


def fast_recursion(prep: Prepared) -> FastRecursion:
    """``S_0 = I``, ``X_k = W_k S_{k-1}^-1 W_k^T``, ``t_k = 1/lambda_max(X_k)``, ``S_k = 2 t_k I - t_k^2 X_k``.

    Then ``S_k >= t_k I > 0`` and, with ``T_k = rho t_k I``, the certificate matrix of a pair
    reduces to ``rho S_m - c c^T`` (Xu & Sivaranjani 2024, ECLipsE-Fast). Nothing here needs to be
    exact: the pair candidates it yields are verified by :func:`verify_pair`.
    """
    x = prep.gram
    scalars: list[float] = []
    s_k = None
    for k in range(len(prep.weights.hidden)):
        if k >= 1:
            w = prep.weights.hidden[k]
            x = w @ np.linalg.solve(s_k, w.T)
            x = 0.5 * (x + x.T)
        lam = float(np.linalg.eigvalsh(x)[-1])
        tk = 1.0 / lam if lam > 0 else 1.0
        scalars.append(tk)
        s_k = 2.0 * tk * np.eye(x.shape[0]) - tk * tk * x
    assert s_k is not None
    return FastRecursion(scalars, s_k, np.linalg.cholesky(s_k))


def fast_candidate(
    prep: Prepared, rec: FastRecursion, i: int, j: int, slack: float = 1e-7
) -> tuple[float, list[np.ndarray]]:
    """``rho = c^T S_m^-1 c`` (slightly inflated so the matrix is definite) and ``T_k = rho t_k I``."""
    c = prep.weights.last[i] - prep.weights.last[j]
    y = np.linalg.solve(rec.s_last_chol, c)
    rho = float(y @ y) * (1.0 + slack) + 1e-300
    return rho, [np.full(s, rho * tk) for s, tk in zip(prep.weights.sizes, rec.scalars, strict=True)]


def rho_and_gradient(prep: Prepared, t: list[np.ndarray], c: np.ndarray) -> tuple[float, list[np.ndarray] | None]:
    """``rho*(T)`` and its gradient in ``T`` (``inf, None`` when ``H(T)`` is not positive definite).

    ``H(T)`` is block tridiagonal, so it is eliminated from the last layer back:
    ``M_m = 2 T_m - c c^T``, ``M_k = 2 T_k - W_{k+1}^T T_{k+1} M_{k+1}^-1 T_{k+1} W_{k+1}``, and
    ``P^-1 = M_1``; ``rho*`` is the top eigenvalue of the pencil ``(T_1 G T_1, M_1)``. The maximising
    increments follow forwards: ``h_1 = sqrt(rho) z`` (``z`` the pencil's eigenvector, scaled so
    that ``z^T T_1 G T_1 z = rho``) and ``h_{k+1} = M_{k+1}^-1 T_{k+1} W_{k+1} h_k``.
    """
    import scipy.linalg as sla

    ws = prep.weights.hidden
    m = len(t)
    mats: list[np.ndarray | None] = [None] * m
    factors: list[tuple[np.ndarray, bool] | None] = [None] * m
    mk = np.diag(2.0 * t[-1]) - np.outer(c, c)
    for k in range(m - 1, -1, -1):
        if k < m - 1:
            tw = t[k + 1][:, None] * ws[k + 1]  # T_{k+1} W_{k+1}
            sol = sla.cho_solve(factors[k + 1], tw)  # type: ignore[arg-type]
            mk = np.diag(2.0 * t[k]) - tw.T @ sol
        mk = 0.5 * (mk + mk.T)
        try:
            factors[k] = sla.cho_factor(mk, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return math.inf, None
        mats[k] = mk
    low = np.tril(factors[0][0])  # type: ignore[index]
    t1 = t[0]
    tgt = t1[:, None] * prep.gram * t1[None, :]
    a = sla.solve_triangular(low, tgt, lower=True, check_finite=False)
    kmat = sla.solve_triangular(low, a.T, lower=True, check_finite=False)
    m1 = kmat.shape[0]
    lam, vec = sla.eigh(0.5 * (kmat + kmat.T), subset_by_index=[m1 - 1, m1 - 1], driver="evr")
    rho = float(lam[-1])
    if not (rho > 0 and math.isfinite(rho)):
        return math.inf, None
    z = sla.solve_triangular(low, vec[:, -1], lower=True, trans="T", check_finite=False)
    w1v0 = prep.gram @ (t1 * z) / math.sqrt(rho)  # W_1 dx_0 for the maximising unit dx_0
    hk = math.sqrt(rho) * z
    grads = [2.0 * hk * (w1v0 - hk)]
    for k in range(1, m):
        img = ws[k] @ hk
        hk = sla.cho_solve(factors[k], t[k] * img)  # type: ignore[arg-type]
        grads.append(2.0 * hk * (img - hk))
    return rho, grads
