"""Convolutions: Conv and ConvTranspose (docs/operators.md, "Convolution")."""

from __future__ import annotations

import math

import numpy as np

from lipgraph.errors import Refuse
from lipgraph.norms import NormBound
from lipgraph.norms.circular import circular_conv_norm
from lipgraph.norms.conv import conv_bound, conv_transpose_bound, resolve_pads
from lipgraph.norms.weight_rounding import abs_norm_conv, add_rounding
from lipgraph.rules.registry import LIPGRAPH_DOMAIN, Bound, RuleContext, rule

# max |w| * sqrt(entries) above which the conv certificates' float64 arithmetic could overflow: the Gram
# matrices hold squares of the weights (up to this squared), and LAPACK's eigensolvers square their entries
# again to scale (2^960 < 2^1024 leaves room for the dimension factors)
_MAX_WEIGHT_SCALE = 2.0**240


def _weight(ctx: RuleContext) -> np.ndarray:
    if not ctx.is_variable(0):
        raise Refuse("the data input X does not depend on the model input (unexpected for a conv on the data path)")
    if ctx.is_variable(1):
        raise Refuse("the conv weight depends on the input (a bilinear map is not globally Lipschitz)")
    w = ctx.const(1)
    if w is None:
        raise Refuse("the conv weight has no known constant value")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 3:
        raise Refuse(f"conv weight of rank {w.ndim}; expected (M, C/group, k1, ...)")
    if not np.all(np.isfinite(w)):
        raise Refuse("the conv weight has non-finite entries")
    # The certificates square the weights (Gram matrices of the symbols): past this size a sum of squares
    # leaves float64's range and the factorisations meet infinities. Such a weight is refused by name.
    amax = float(np.abs(w).max(initial=0.0))
    if amax * math.sqrt(w.size) > _MAX_WEIGHT_SCALE:
        raise Refuse(
            f"the conv weight's entries (max |w| = {amax:.3g}) are too large for its float64 certificate "
            "(its Gram matrices would overflow); rescale the layer"
        )
    ks = ctx.attr("kernel_shape")
    if ks and tuple(int(k) for k in ks) != tuple(w.shape[2:]):
        raise Refuse(f"kernel_shape {list(ks)} does not match the weight's spatial shape {list(w.shape[2:])}")
    return w


def _spatial(ctx: RuleContext, d: int) -> tuple[int | None, ...] | None:
    """Spatial input size (NC + d axes) or None when the rank is unknown."""
    shape = ctx.in_shape(0)
    if shape is None or len(shape) != d + 2:
        return None
    return tuple(shape[2:])


def _bias_term(ctx: RuleContext) -> float:
    """A bias that depends on the input adds ``sqrt(times each element is broadcast) * L_B``."""
    if not ctx.is_variable(2):
        return 0.0
    out = ctx.out_shape(0)
    if out is None or any(v is None for v in out[2:]):
        raise Refuse("the bias depends on the input and the output size is unknown")
    return math.sqrt(math.prod(int(v) for v in out[2:])) * float(ctx.input_bounds[2] or 0.0)


def _finish(ctx: RuleContext, nb: NormBound, warnings: list[str], w: np.ndarray, groups: int) -> Bound:
    """The op's bound from the stored kernel's ``nb``, plus ``rho || |W| ||_2`` when a pass computed the
    kernel in float64 (``Node.rho``; the exact kernel is within rho |W| entrywise)."""
    lin = float(ctx.input_bounds[0] or 0.0)
    bias = _bias_term(ctx)
    rho = float(ctx.node.rho)
    value = add_rounding(nb.value, rho, abs_norm_conv(w, groups)) if rho else nb.value
    method = f"{nb.method} + folded-weight rounding (rho {rho:.1e})" if rho else nb.method
    return Bound(
        value * lin + bias,
        method,
        factor=value if bias == 0.0 else None,
        lower=nb.lower,
        warnings=warnings,
    )


def _common_attrs(ctx: RuleContext) -> tuple[np.ndarray, int, int, list[int], list[int]]:
    """Weight, spatial rank, group, strides and dilations shared by Conv and ConvTranspose."""
    w = _weight(ctx)
    d = w.ndim - 2
    groups = int(ctx.attr("group", 1))
    strides = ctx.attr("strides") or [1] * d
    dilations = ctx.attr("dilations") or [1] * d
    if any(int(s) < 1 for s in strides) or any(int(v) < 1 for v in dilations):
        raise Refuse(f"strides {list(strides)} / dilations {list(dilations)} must be positive")
    if groups < 1:
        raise Refuse(f"group={groups} must be positive")
    return w, d, groups, list(strides), list(dilations)


@rule("Conv")
def conv(ctx: RuleContext) -> Bound:
    """Conv (any groups, strides, dilations, pads, auto_pad; 1-D/2-D/3-D): ``||conv||_2`` x L_in.

    How: with a known input size, the tightest sound bound among (a) the exact SVD of the op's dense
    matrix when it is small, (b) the polyphase circulant bound: strides rewritten space-to-depth into a
    stride-1 kernel, the zero-padded conv written as embedding -> circular conv on a grid large enough
    that the restriction argument holds -> restriction, and the max over grid frequencies of the
    symbol's largest singular value (FFT, rounding allowances included), (c) the LMT overlap bound.
    Groups: max over groups (block diagonal). Unknown spatial size: the LMT bound, which holds for every
    size. The weight must be a constant (a variable weight makes the op bilinear: refused); the bias
    does not change the constant. A kernel a pass computed in float64 (a folded BatchNormalization or
    scale, ``rho`` > 0) adds ``rho sqrt(max row sum * max column sum of |kernel|)``, which bounds the
    exact kernel's distance from the stored one (Schur test; Higham 2002, Lemma 3.1).
    How tight: exact for small inputs; the circulant bound measured 1.0x-1.1x the exact norm for inputs
    of a few pixels and more (bench/conv_tightness.py); LMT 1.5x-2.7x.
    Source: Sedghi, Gupta, Long 2019 (singular values of convolutions); Tsuzuku, Sato, Sugiyama 2018
    (LMT); Delattre et al. 2023 (Gram iteration); docs/operators.md.
    """
    w, d, groups, strides, dilations = _common_attrs(ctx)
    shape = ctx.in_shape(0)
    if shape is not None and len(shape) == d + 2 and shape[1] is not None and shape[1] != groups * w.shape[1]:
        raise Refuse(f"input has {shape[1]} channels, weight expects {groups} x {w.shape[1]}")
    if groups < 1 or w.shape[0] % groups:
        raise Refuse(f"{w.shape[0]} output channels are not divisible by group={groups}")
    spatial = _spatial(ctx, d)
    warnings: list[str] = []
    try:
        if spatial is None or any(v is None for v in spatial):
            nb = conv_bound(w, groups, strides, dilations, None, None, None)
        else:
            pb, pe = resolve_pads(spatial, w.shape[2:], strides, dilations, ctx.attr("pads"), ctx.attr("auto_pad"))
            nb = conv_bound(w, groups, strides, dilations, pb, pe, spatial)
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    return _finish(ctx, nb, warnings, w, groups)


@rule("ConvTranspose")
def conv_transpose(ctx: RuleContext) -> Bound:
    """ConvTranspose (weight ``(C_in, C_out/group, k...)``): the norm of the conv it is the adjoint of.

    How: the op is (crop or zero-extend) o T_full, T_full the adjoint of a VALID stride-s conv on the
    full output length with the same weight read as a Conv weight. Cropping by pads / output_shape
    makes it exactly the adjoint of a zero-padded conv on the visible window; output_padding only
    extends with zeros. That conv is bounded as for Conv (dense exact, polyphase circulant, LMT).
    Where ONNX and runtimes disagree on how an odd SAME/output_shape padding is split, the max over
    both splits (sound for either). Unknown input size: the LMT bound of the adjoint conv. A folded
    kernel's float64 rounding is added as for Conv.
    How tight: exact or circulant-tight for explicit pads; a split ambiguity can cost up to ~1.5x.
    Source: docs/operators.md; Sedghi et al. 2019; Tsuzuku et al. 2018; Delattre et al. 2023.
    """
    w, d, groups, strides, dilations = _common_attrs(ctx)
    if w.shape[0] % groups:
        raise Refuse(f"{w.shape[0]} input channels are not divisible by group={groups}")
    shape = ctx.in_shape(0)
    if shape is not None and len(shape) == d + 2 and shape[1] is not None and shape[1] != w.shape[0]:
        raise Refuse(f"input has {shape[1]} channels, weight expects {w.shape[0]}")
    spatial = _spatial(ctx, d)
    try:
        nb = conv_transpose_bound(
            w,
            groups,
            spatial,
            strides,
            dilations,
            ctx.attr("pads"),
            ctx.attr("output_padding"),
            ctx.attr("output_shape"),
            ctx.attr("auto_pad"),
        )
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    return _finish(ctx, nb, [], w, groups)


@rule("CircularConv", domain=LIPGRAPH_DOMAIN)
def circular_conv(ctx: RuleContext) -> Bound:
    """Circular convolution (wrap padding by exactly the kernel's reach, then a valid Conv): exact norm.

    Fused by lipgraph/passes/circular_conv.py from torch's ``padding_mode="circular"`` exports
    (legacy: Slice + Concat per axis; dynamo: ``Pad(mode="wrap")``). The pair is a circular
    correlation on the input's own n_1 x ... x n_d grid (up to a cyclic shift, norm 1), block
    diagonalised by the DFT: its norm is ``max over the grid frequencies w of ||K_hat(w)||_2``, with
    strides dividing the grid handled by the exact space-to-depth rewrite and groups by a max.
    How tight: exact, up to the rounding allowances of the DFT and the SVD (~1e-14 relative); the
    op-by-op bound it replaces charges sqrt(3) or 2 per padded axis on top of the padded-grid norm.
    A kernel folded in float64 (a Conv -> BatchNormalization pair) adds its rounding as for Conv.
    Source: Sedghi, Gupta, Long 2019 (singular values of convolutional layers); the families that
    use circular convs: Li et al. 2019 (BCOP), Trockman & Kolter 2021 (Cayley), Xu et al. 2022 (LOT).
    """
    w, d, groups, strides, dilations = _common_attrs(ctx)
    spatial = _spatial(ctx, d)
    if spatial is None or any(v is None for v in spatial):
        raise Refuse("circular conv with an unknown input size (the pass only fuses known sizes)")
    if w.shape[0] % groups or (ctx.in_shape(0) or (None, None))[1] not in (None, groups * w.shape[1]):
        raise Refuse(f"channels do not match weight {list(w.shape)} with group={groups}")
    try:
        nb = circular_conv_norm(w, groups, strides, dilations, [int(v) for v in spatial])  # type: ignore[arg-type]
    except ValueError as exc:
        raise Refuse(str(exc)) from exc
    return _finish(ctx, nb, [], w, groups)
