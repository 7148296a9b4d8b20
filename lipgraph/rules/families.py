"""Rules for the fused 1-Lipschitz family blocks (domain ``lipgraph``), made by the passes
lipgraph/passes/power_series.py, sandwiches.py and conv_sandwiches.py.

Each rule returns the smaller of the family's structural certificate (when its preconditions hold
for the stored constants) and the bound the ops would get one by one, so recognising a block never
loosens a bound. The mathematics is in each docstring and in docs/lipschitz-families.md.
"""

from __future__ import annotations

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64 as EPS
from lipgraph.norms.conv import conv_bound
from lipgraph.norms.dense import spectral_norm
from lipgraph.norms.rounding import gamma
from lipgraph.norms.series import abs_series, imaginary_axis_max, perturbation, skew_split_kernel, skew_split_matrix
from lipgraph.norms.weight_rounding import abs_norm_conv, abs_norm_dense, compose
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule


def operator_norm(attrs: dict, weight: np.ndarray) -> float:
    """Sound upper bound of the norm of the dense matrix or (zero-padded) conv ``weight`` in ``attrs``' geometry."""
    if attrs["kind"] == "dense":
        return spectral_norm(weight).value
    if not np.any(weight):
        return 0.0
    try:
        nb = conv_bound(
            weight,
            attrs["group"],
            attrs["strides"],
            attrs["dilations"],
            attrs["pads_begin"],
            attrs["pads_end"],
            attrs["spatial"],
            want_lower=False,
        )
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    return nb.value


def _skew_geometry(attrs: dict) -> bool:
    """True when the op's adjoint is the op with the adjoint weight (so 'skew' is checkable on the weight)."""
    if attrs["kind"] == "dense":
        m = attrs["matrix"]
        return m.shape[0] == m.shape[1]
    k = attrs["kernel"]
    if attrs["group"] != 1 or k.shape[0] != k.shape[1] or any(s != 1 for s in attrs["strides"]):
        return False
    for ks, dl, pb, pe in zip(k.shape[2:], attrs["dilations"], attrs["pads_begin"], attrs["pads_end"], strict=True):
        if ks % 2 == 0 or pb != pe or pb != dl * (ks - 1) // 2:
            return False
    return True


@rule("PowerSeries", domain=LIPGRAPH_DOMAIN)
def power_series(ctx: RuleContext) -> Bound:
    """Power series ``sum_i a_i A^i x`` of one square operator (SOC): ``||p(A)||``, near 1 for skew A.

    What: the chain ``x + a_1 A x + ... + a_m A^m x`` fused by the power-series pass, A a Conv
    (zero padding) or a dense matrix; skew orthogonal convolutions use ``a_i = 1/i!``.
    How: split ``A = S + N`` with S exactly skew-adjoint (the weight minus its adjoint, halved;
    for a stride-1 conv with symmetric 'same' zero padding the adjoint is the conv with channels
    swapped and taps flipped). ``p(S)`` is normal with eigenvalues ``p(i theta)``,
    ``|theta| <= rho``, ``rho >= ||S||`` (an upper bound of the operator norm: exact SVD or
    circulant FFT bound with rounding allowance), so ``||p(S)|| <= max_{|theta| <= rho}
    |p(i theta)|``, bounded rigorously on a grid with the polynomial's slope. The non-skew rest
    adds ``sum_i |a_i| ((rho + delta)^i - rho^i)``, ``delta >= ||N||`` (0 for an exactly skew
    weight). The result is the min of that and ``sum_i |a_i| ||A||^i`` (the op-by-op bound).
    How tight: within ~1e-4 of ``max |p(i theta)|`` over the spectrum's hull; equal to the exact
    norm when the extreme eigenvalue of S sits where ``|p(i theta)|`` peaks (1 + rho^(m+1)/(m+1)!
    at worst for the exponential). Nearly skew weights lose ``~ delta e^rho``.
    Source: Singla and Feizi 2021 (skew orthogonal convolutions); Sedghi, Gupta, Long 2019 (conv
    spectra).
    """
    _, lin = ctx.single_variable_input()
    attrs = ctx.node.attrs
    coefs = attrs["coefficients"]
    weight = attrs["matrix"] if attrs["kind"] == "dense" else attrs["kernel"]
    generic = abs_series(coefs, operator_norm(attrs, weight))
    best, method = generic, f"power series of {attrs['terms']} terms: sum |a_i| ||A||^i"
    if _skew_geometry(attrs):
        split = skew_split_matrix if attrs["kind"] == "dense" else skew_split_kernel
        s, n_hat, n_err = split(weight)
        rho = operator_norm(attrs, s)
        delta = (operator_norm(attrs, n_hat) + n_err) if np.any(n_hat) else 0.0
        cand = imaginary_axis_max(coefs, rho) + (perturbation(coefs, rho, delta) if delta else 0.0)
        if cand < best:
            kind = "exactly skew" if delta == 0.0 else f"nearly skew, ||A - S|| <= {delta:.3g}"
            best, method = (
                cand,
                f"power series of {attrs['terms']} terms, {kind}: max |p(i theta)|, |theta| <= {rho:.4g}",
            )
    return Bound(best * lin, method, factor=best)


# ----------------------------------------------------------------------------- sandwiches


def _up(x: float) -> float:
    return float(np.nextafter(x * (1 + 8 * EPS), np.inf))


def _cmax(c: object) -> float:
    arr = np.abs(np.asarray(c, dtype=np.float64))
    return float(arr.max()) if arr.size else 1.0


def _scales(attrs: dict, factor: float) -> float:
    """Upper bound of ``|c_post product| * max |c_pre|`` (the scalings between and after the two weights)."""
    # c_pre and the c_post product were formed in float64 (reciprocals of Divs, products): their exact
    # values are within gamma_ops of the stored ones
    ops = len(attrs.get("c_post", [])) + int(attrs.get("c_post_divs", 0)) + int(attrs.get("c_pre_ops", 0)) + 2
    return _up(abs(factor) * _cmax(attrs.get("c_pre", 1.0)) * (1.0 + gamma(ops)))


def _l1_err(arr: np.ndarray, ops: int) -> float:
    """Operator-norm bound of the rounding of ``ops`` float64 products per entry of ``arr``.

    Dense or conv: the norm is at most the sum of the absolute entries (each conv tap is a shift)."""
    return _up(float(np.sum(np.abs(arr))) * (ops + 1) * EPS * 1.01)


def _second_operator(attrs: dict, factor: float) -> tuple[np.ndarray, float]:
    """``factor * P diag(c_pre)`` as a matrix (n x h) or ConvTranspose kernel, and its rounding bound."""
    p, c_pre = attrs["p"], np.asarray(attrs["c_pre"], dtype=np.float64)
    if attrs["kind"] == "dense":
        scaled = factor * p * (c_pre[None, :] if c_pre.size > 1 else c_pre.reshape(1, 1))
    else:
        shape = (-1,) + (1,) * (p.ndim - 1)
        scaled = factor * p * (c_pre.reshape(shape) if c_pre.size > 1 else c_pre.reshape(1))
    # roundings per entry: the c_post product (k - 1), the reciprocal of each Div among its k factors, the two
    # products here, and those that formed c_pre (counted k + divs + 2: one to spare)
    ops = len(attrs["c_post"]) + int(attrs.get("c_post_divs", 0)) + 2 + int(attrs["c_pre_ops"])
    return scaled, _l1_err(scaled, ops)


def _folded_term(attrs: dict, first: str, second: str, scales: float) -> float:
    """The exact block's distance from the stored one when a pass computed its weights in float64.

    With ``|Q_exact - Q| <= rho_q |Q|`` and ``|P_exact - P| <= rho_p |P|`` entrywise (lipgraph/norms/
    weight_rounding.py; the scalings between are part of P), every Jacobian ``P C D Q`` (D diagonal in
    [0, 1], C the constant scalings, ``scales`` >= their largest modulus) moves by at most
    ``((1 + rho_p)(1 + rho_q) - 1) scales || |P| || || |Q| ||``: expand the product entrywise.
    0 when neither weight was computed by a pass."""
    rho = compose(float(attrs.get(f"rho_{first}", 0.0)), float(attrs.get(f"rho_{second}", 0.0)))
    if rho == 0.0:
        return 0.0
    norms = []
    for key in (first, second):
        w = np.asarray(attrs[key], dtype=np.float64)
        group = int(attrs.get(f"{key}_group", attrs.get("group", 1)))  # circular: n_group / m_group
        norms.append(abs_norm_dense(w) if attrs.get("kind") == "dense" else abs_norm_conv(w, group))
    return _up(_up(_up(rho * scales) * norms[0]) * norms[1])


def _rows(q: np.ndarray, kind: str) -> np.ndarray:
    """The hidden units of Q as rows: dense rows of the h x n matrix, or the conv's output channels."""
    return q.reshape(q.shape[0], -1)


def _hidden_scale(p_rows: np.ndarray, q_rows: np.ndarray) -> np.ndarray:
    """The nonnegative S minimising ``||P - Q^T S||_F`` per hidden unit (any choice is sound)."""
    den = np.sum(q_rows * q_rows, axis=1)
    num = np.sum(p_rows * q_rows, axis=1)
    s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.maximum(s, 0.0)


def _scale_rows(arr: np.ndarray, s: np.ndarray, kind: str) -> np.ndarray:
    return arr * s.reshape((-1,) + (1,) * (arr.ndim - 1))


@rule("ResidualSandwich", domain=LIPGRAPH_DOMAIN)
def residual_sandwich(ctx: RuleContext) -> Bound:
    """Residual sandwich ``x - P sigma(Q x + b)`` (CPL, SLL): ``max(1, ||S^(1/2) Q||^2 - 1)`` when ``P = Q^T S``.

    What: the block fused by the residual-sandwich pass: Q a Gemm/MatMul or Conv, P a Gemm/MatMul
    or the ConvTranspose with Q's geometry (the adjoint of a conv with P's kernel), sigma
    nondecreasing and 1-Lipschitz, scalings folded into P (sign of the residual included).
    How: with secant slopes ``D`` (diagonal, in [0, 1]) the block's Jacobian is ``I - P D Q``. Pick
    ``S >= 0`` diagonal per hidden unit closest to ``P = Q^T S`` and let ``E = P - Q^T S``. Then
    ``I - Q^T S D Q`` is symmetric with spectrum in ``[1 - ||S^(1/2) Q||^2, 1]``, so
    ``||J|| <= max(1, ||S^(1/2) Q||^2 - 1) + ||E|| ||Q||``. Norms are sound upper bounds (exact SVD,
    circulant FFT bound or dense conv SVD, with rounding allowances; the float products forming
    P, S and E add their own l1 rounding terms). The result is the min of that and ``1 + ||P|| ||Q||``.
    How tight: exactly 1 for CPL (``S = 2/||W||^2``) and SLL up to the norm's allowance; when P is not
    a scaled transpose of Q (a different kernel, S < 0) the ``||E||`` term keeps it sound.
    Source: Meunier et al. 2022 (CPL); Araujo et al. 2023 (SLL).
    """
    _, lin = ctx.single_variable_input()
    attrs = ctx.node.attrs
    kind = attrs["kind"]
    factor = -float(attrs["sign"]) * float(np.prod(attrs["c_post"])) if attrs["c_post"] else -float(attrs["sign"])
    q = np.asarray(attrs["q"], dtype=np.float64)
    p, p_err = _second_operator(attrs, factor)
    # Hidden units: dense P is n x h (columns), ConvTranspose kernel is (M, C/g, k...) (axis 0).
    p_rows = p.T if kind == "dense" else p.reshape(p.shape[0], -1)
    q_rows = _rows(q, kind)
    q_norm = operator_norm(attrs, q)
    p_norm = operator_norm(attrs, p.T if kind == "dense" else p) + p_err
    generic = _up(1.0 + p_norm * q_norm)
    s = _hidden_scale(p_rows, q_rows)
    sq = _scale_rows(q, np.sqrt(s), kind)
    sigma = operator_norm(attrs, sq) + _l1_err(sq, 3)
    e = p_rows - _scale_rows(q_rows, s, kind)
    e_op = e.T if kind == "dense" else e.reshape(p.shape)
    e_norm = (operator_norm(attrs, e_op) if np.any(e) else 0.0) + p_err + _l1_err(np.abs(e) + np.abs(p_rows), 3)
    cert = _up(max(1.0, _up(sigma * sigma) - 1.0) + e_norm * q_norm)
    if cert < generic:
        method = f"residual sandwich, P = Q^T S + E: max(1, ||S^1/2 Q||^2 - 1) + ||E|| ||Q|| ({kind})"
        best = cert
    else:
        best, method = generic, f"residual sandwich, 1 + ||P|| ||Q|| (P is not Q^T S with S >= 0; {kind})"
    best = _up(best + _folded_term(attrs, "q", "p", _scales(attrs, factor)))
    return Bound(best * lin, method, factor=best)


@rule("Sandwich", domain=LIPGRAPH_DOMAIN)
def sandwich(ctx: RuleContext) -> Bound:
    """Sandwich layer ``M sigma(N x + b)`` (LBDN): ``sqrt(1 + max(0, lambda_max(G)) ||N||^2)``.

    What: a dense layer pair fused by the sandwich pass, sigma nondecreasing and 1-Lipschitz.
    How: for any positive diagonal Lambda and ``G = Lambda N N^T Lambda + M^T M - 2 Lambda``,
    ``||M D N||^2 <= 1 + max(0, lambda_max(G)) ||N||^2`` for every diagonal D in [0, 1] (slope
    restriction: ``v^T Lambda v <= v^T Lambda u`` for ``v = D u``, then complete the square; proof in
    docs/lipschitz-families.md). Lambda solves the off-diagonal equations of ``G = 0`` in least squares
    (exact for LBDN, where ``Lambda = Psi^2``); lambda_max is bounded by eigvalsh plus its backward
    error and the float error of forming G. The result is the min of that and ``||M|| ||N||``.
    How tight: 1 (to ~1e-12) for Wang and Manchester's layers; never above the product of norms.
    Their conv layers (circular convs) are fused separately: see ``lipgraph rule CircularSandwich``.
    Source: Wang and Manchester 2023 (direct parameterisation of Lipschitz-bounded deep networks);
    Fazlyab et al. 2019 (slope-restricted quadratic constraints).
    """
    from lipgraph.norms.sandwich import sandwich_certificate

    _, lin = ctx.single_variable_input()
    attrs = ctx.node.attrs
    factor = float(np.prod(attrs["c_post"])) if attrs["c_post"] else 1.0
    n = np.asarray(attrs["q"], dtype=np.float64)
    m, m_err = _second_operator(attrs, factor)
    n_norm = spectral_norm(n).value
    m_computed_norm = spectral_norm(m).value  # >= ||m||_2, the float64 matrix at hand
    m_norm = m_computed_norm + m_err
    generic = _up(m_norm * n_norm)
    cert, gap = sandwich_certificate(m, n, n_norm, m_err, worth_below=generic, m_norm=m_computed_norm)
    if cert < generic:
        best, method = cert, f"sandwich (LBDN), lambda_max(G) <= {gap:.2e}"
    else:
        best, method = generic, "sandwich, ||M|| ||N|| (no diagonal Lambda tried certifies less)"
    best = _up(best + _folded_term(attrs, "q", "p", _scales(attrs, factor)))
    return Bound(best * lin, method, factor=best)


@rule("CircularSandwich", domain=LIPGRAPH_DOMAIN)
def circular_sandwich(ctx: RuleContext) -> Bound:
    """Circular-conv sandwich ``M sigma(N x + b)`` (Sandwich conv layers): certified per DFT frequency.

    What: two stride-1 circular convs N (c_in -> h) and M (h -> c_out) on one grid with sigma
    (nondecreasing, 1-Lipschitz) and per-channel scalings between, fused by the conv-sandwich pass.
    How: for any positive diagonal Lambda, ``||M D N||^2 <= 1 + max(0, lambda_max(G)) ||N||^2`` with
    ``G = Lambda N N^T Lambda + M^T M - 2 Lambda`` (D diagonal in [0, 1]; the dense Sandwich rule's
    inequality). With Lambda per channel and constant over space, the unitary DFT block-diagonalises
    N, M and Lambda alike, so G's eigenvalues are those of the h x h Hermitian matrices
    ``G(w) = Lambda N(w) N(w)^H Lambda + M(w)^H M(w) - 2 Lambda`` over the grid frequencies w, where
    N(w), M(w) are the kernels' channel symbols (a wrap shift only multiplies a symbol by a phase,
    which cancels), and ``||N|| = max_w ||N(w)||``. Lambda solves the off-diagonal equations of
    ``sum_w G(w) = 0`` in least squares on the kernels wrapped onto the grid (``Psi^2`` for the
    family). Rounding: direct-DFT symbol allowances, the error of forming G(w) and eigvalsh's backward
    error are added. The result is the min of that and ``||M|| ||N||`` (exact circular norms).
    Zero-padded convs are not fused (their G is not block circulant) and keep the per-op bound.
    How tight: 1 (to ~1e-6 with float32 weights) for Wang and Manchester's layers, whose
    ``A_w A_w^H + B_w B_w^H = I`` makes ``G(w) = 0`` at ``Lambda = Psi^2``; never above the product.
    Source: Wang and Manchester 2023 (direct parameterisation of Lipschitz-bounded deep networks);
    Fazlyab et al. 2019 (slope-restricted quadratic constraints); Sedghi, Gupta, Long 2019 (conv spectra).
    """
    from lipgraph.norms.sandwich_conv import block_bounds

    _, lin = ctx.single_variable_input()
    try:
        b = block_bounds(ctx.node.attrs)
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    generic = _up(b.m_norm * b.n_norm)
    if b.certificate is not None and b.certificate < generic:
        best, method = b.certificate, f"circular sandwich, max over frequencies of lambda_max(G(w)) <= {b.gap:.2e}"
    else:
        why = "too many frequencies" if b.certificate is None else "no per-channel Lambda certifies less"
        best, method = generic, f"circular sandwich, ||M|| ||N|| ({why})"
    attrs = ctx.node.attrs
    # c_mid, c_pre: float64 products of the scalings (a reciprocal per Div): 2 roundings each, counted
    scales = _up(_cmax(attrs.get("c_mid", 1.0)) * _cmax(attrs.get("c_pre", 1.0)))
    scales = _up(scales * (1.0 + gamma(2 * int(attrs.get("scalings", 0)) + 2)))
    best = _up(best + _folded_term(attrs, "n", "m", scales))
    return Bound(best * lin, method, factor=best)
