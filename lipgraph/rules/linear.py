"""Dense linear ops: Gemm and MatMul with a constant operand (docs/operators.md, "Dense linear")."""

from __future__ import annotations

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64, NormBound
from lipgraph.norms.dense import row_norms_up, spectral_norm
from lipgraph.norms.weight_rounding import abs_norm_dense, add_rounding
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule
from lipgraph.rules.shapes import broadcast_factor


@rule("Gemm")
def gemm(ctx: RuleContext) -> Bound:
    """Gemm ``alpha * A' B' + beta * C``: ``|alpha| ||W'||_2`` for the constant operand W.

    How: exact float64 SVD of the constant matrix (transposes do not change its norm; the
    variable operand may be transposed too, since ``||X^T W||_F <= ||X||_F ||W||_2``), plus the
    rounding allowance of docs/floating-point.md. A variable C adds ``|beta| sqrt(k) L_C`` (broadcast k times).
    A weight a pass computed in float64 (a folded BatchNormalization or scale, ``rho`` > 0) adds
    ``rho sqrt(||W||_1 ||W||_inf)`` on ``|W|``, which bounds the exact weight's distance from the stored
    one (Schur test; Higham 2002, Lemma 3.1).
    Tightness: exact for the op. Source: docs/operators.md; Virmaux & Scaman 2018 (AutoLip).
    """
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    var_a, var_b = ctx.is_variable(0), ctx.is_variable(1)
    if var_a and var_b:
        raise Refuse("both Gemm operands depend on the input (a bilinear map is not globally Lipschitz)")
    total = 0.0
    factor = 0.0
    nb: NormBound | None = None
    if var_a or var_b:
        const_idx = 1 if var_a else 0
        w = ctx.const(const_idx)
        if w is None:
            raise Refuse("the constant Gemm operand has no known value")
        if np.ndim(w) > 2:  # ONNX Gemm takes matrices (a 4-D kernel here is a malformed model)
            raise Refuse(f"the constant Gemm operand has {np.ndim(w)} dimensions; Gemm takes a matrix")
        nb = spectral_norm(np.atleast_2d(w))
        norm = add_rounding(nb.value, ctx.node.rho, abs_norm_dense(np.atleast_2d(w))) if ctx.node.rho else nb.value
        factor = abs(alpha) * norm
        total += factor * float(ctx.input_bounds[0 if var_a else 1] or 0.0)
    if ctx.is_variable(2):
        k = broadcast_factor(ctx, 2)
        total += abs(beta) * np.sqrt(k) * float(ctx.input_bounds[2] or 0.0)
    method = nb.method if nb else "bias only"
    lower = abs(alpha) * nb.lower if nb and nb.lower is not None else None
    return Bound(total, method, factor=factor if not ctx.is_variable(2) else None, lower=lower)


def _batched_norm(w: np.ndarray, right: bool) -> NormBound:
    """Norm bound of ``X -> X @ W`` (right) or ``X -> W @ X`` (left) for a possibly batched W.

    A 2-D W acts the same on every row block: ``||W||``. A batched W either pairs one slice with
    each batch element (max over slices) or, under broadcasting, several slices with one element;
    the concatenation of all slices bounds both cases.
    """
    if w.ndim <= 2:
        return spectral_norm(np.atleast_2d(w) if right or w.ndim == 2 else w.reshape(-1, 1))
    mats = w.reshape(-1, w.shape[-2], w.shape[-1])
    joined = np.concatenate(list(mats), axis=1 if right else 0)
    nb = spectral_norm(joined)
    return NormBound(nb.value, nb.method + " (batched, slices joined)", None)


@rule("MatMul")
def matmul(ctx: RuleContext) -> Bound:
    """MatMul with one constant operand: ``||W||_2`` (numpy matmul semantics, batching included).

    How: exact SVD with rounding allowance. ``x @ W`` acts on each row as ``W^T``; ``W @ x`` on each
    column as W; a 1-D W is a vector (its Euclidean norm). A batched constant joins its slices,
    which covers both batch-wise pairing and broadcasting (sound; exact when W is 2-D).
    Two variable operands (attention) are not globally Lipschitz: refused. A weight folded in float64
    (``rho`` > 0) adds ``rho || |W| ||_2`` as for Gemm (Schur test on the joined slices).
    Source: docs/operators.md; Higham 2002, Lemma 3.1
    """
    var0, var1 = ctx.is_variable(0), ctx.is_variable(1)
    if var0 and var1:
        raise Refuse("both MatMul operands depend on the input (not globally Lipschitz, e.g. attention)")
    const_idx = 1 if var0 else 0
    w = ctx.const(const_idx)
    if w is None:
        raise Refuse("the constant MatMul operand has no known value")
    w = np.asarray(w, dtype=np.float64)
    nb = spectral_norm(w.reshape(1, -1)) if w.ndim == 1 else _batched_norm(w, right=var0)
    value = nb.value
    if ctx.node.rho:
        # the slices joined along the axis the norm above joined them (|W| of the same matrix)
        mats = w.reshape(1, -1) if w.ndim == 1 else w.reshape(-1, w.shape[-2], w.shape[-1])
        joined = mats if w.ndim == 1 else np.concatenate(list(mats), axis=1 if var0 else 0)
        value = add_rounding(value, ctx.node.rho, abs_norm_dense(joined))
    lin = float(ctx.input_bounds[0 if var0 else 1] or 0.0)
    return Bound(value * lin, nb.method, factor=value, lower=nb.lower)


@rule("LinearMap", domain=LIPGRAPH_DOMAIN)
def linear_map(ctx: RuleContext) -> Bound:
    """A composed linear region (several linear ops with nothing nonlinear between): ``||M||_2`` x L_in.

    Made by lipgraph/passes/linear_maps.py: consecutive MatMul / Gemm / Conv / circular conv, Slice,
    Add/Sub of linear branches of one tensor, scalings and reshapes, whose dense matrix M (rows: the
    region's output, columns: its input) was built in float64 from the float32 constants. The norm of
    the composite is taken once -- after multiplying the parts and dropping the rows a Slice
    discards -- instead of multiplying (or adding) the parts' norms.
    How: exact SVD of M with the SVD allowance, plus the float64 composition error
    ``||M - fl(M)||_2 <= gamma_n || |M| ||_F`` (``|M|``: the same region on the constants' absolute
    values, n: total inner dimension plus the number of ops). When some constants were themselves
    computed in float64 by an earlier pass (folded weights, within ``rho_i |W_i|`` of exact), the exact
    region differs from the one composed from the stored constants by at most
    ``(prod (1 + rho_i) - 1) |M|`` entrywise (expand the product), the ``rho`` attribute: added as
    ``rho || |M| ||_F``.
    How tight: exact for the region (up to ~1e-13 relative); never above the product of the parts.
    Source: Higham 2002, Accuracy and Stability of Numerical Algorithms, sec. 3.5 (error of matrix
    products); Virmaux & Scaman 2018 (AutoLip) on bounding linear compositions jointly.
    """
    _, lin = ctx.single_variable_input()
    mat, amat = ctx.const(1), ctx.const(2)
    if mat is None or amat is None:
        raise Refuse("the composed matrix of a linear region is missing")
    nb = spectral_norm(np.asarray(mat, dtype=np.float64))
    n = int(ctx.attr("inner", 0)) + int(np.asarray(mat).shape[1]) + 8
    gamma = n * EPS64 / (1.0 - n * EPS64)
    rho = float(ctx.attr("rho", 0.0))  # folded constants' own rounding (composed over the region's ops)
    frob = float(row_norms_up(np.asarray(amat, dtype=np.float64).reshape(1, -1))[0])  # no underflow of squares
    err = (gamma + rho) * frob * (1.0 + 2 * gamma)
    value = float(np.nextafter(nb.value + err, np.inf))
    ops = ctx.attr("ops", [])
    method = f"composed linear region ({' -> '.join(ops)}): {nb.method}"
    return Bound(value * lin, method, factor=value, lower=nb.lower)
