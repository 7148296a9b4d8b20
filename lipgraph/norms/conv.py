"""Operator norms of ONNX ``Conv`` and ``ConvTranspose`` (docs/operators.md, "Convolution"): the chooser.

Pure numpy, N-d spatial (1-D, 2-D, 3-D). Layouts follow ONNX: input ``(B, C, D1, ..., Dd)``,
Conv weight ``(M, C/group, k1, ..., kd)``, pads ``[x1_b, x2_b, ..., x1_e, x2_e]``. Output
position ``o`` of a Conv reads input position ``i = o*s + j*dil - p_b`` through tap ``j``.

Three sound bounds, every one ``>= ||op||_2`` in real arithmetic, rounding allowances included:

* :func:`conv_dense_bound` -- exact: the dense matrix of the op on the known input size and its SVD
  (only for small operators).
* :func:`conv_circulant_bound` -- the zero-padded (strided) conv, rewritten space-to-depth into a
  stride-1 correlation, is embedding -> circular correlation on a grid -> restriction (see
  :func:`circulant_grid` for the grid condition), so its norm is at most the circular one, which is the
  largest singular value of the kernel symbol over the grid frequencies (Sedghi et al. 2019).
* :func:`conv_lmt_bound` -- the LMT overlap bound (Tsuzuku et al. 2018), independent of the input size.

:func:`conv_bound` picks the tightest of those that apply. ConvTranspose has the norm of the conv
it is the adjoint of; :func:`conv_transpose_adjoint_geometries` turns its attributes into that conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product

import numpy as np

from lipgraph.norms import EPS64, NormBound, discarded
from lipgraph.norms.conv_dense import (  # noqa: F401  (re-exported: public and test-facing names)
    _conv_adjoint,
    _conv_apply,
    _windows,
    conv_dense_bound,
    conv_dense_matrix,
    conv_power_lower,
    dense_cost,
)
from lipgraph.norms.conv_fft import (  # noqa: F401
    _CHUNK_ENTRIES,
    _dft_allowance,
    _half_frequencies,
    _phase_geometry,
    _top_sv_stack,
    _twiddles,
    circulant_grid,
    circular_norm_same_grid,
    conv_circulant_bound,
    phase_kernel,
)
from lipgraph.norms.conv_geometry import (  # noqa: F401
    ConvGeometry,
    _check,
    _dilate,
    _grouped,
    _out_spatial,
    _per_axis,
    output_size,
    resolve_pads,
)
from lipgraph.norms.stack_sv import top_sv_stack

# Dense exact path: at most this many flops (rough SVD cost, summed over groups).
_DENSE_FLOP_BUDGET = 1.2e9
# The circulant bound visits every frequency of its grid (and builds an index array of it): above this
# many grid points (a 2048 x 2048 input) it would exhaust memory and time, so the LMT bound is used.
_MAX_CIRCULANT_POINTS = 2**22
# Multiply-adds allowed for the power-iteration lower estimate (a slack figure, not a bound): at the
# old 2e9 it cost a third of a ResNet-18's bound time, more than the certified bounds themselves.
_POWER_LOWER_BUDGET = 4e8


# --------------------------------------------------------------------------------------------
# LMT overlap bound


def conv_lmt_bound(
    weight: np.ndarray, groups: int, strides: Sequence[int] | None = None, dilations: Sequence[int] | None = None
) -> NormBound:
    """LMT overlap bound, valid for every input size and padding (Tsuzuku et al. 2018).

    ``||y||^2 = sum_o ||W_mat patch_o||^2 <= ||W_mat||^2 sum_o ||patch_o||^2`` and every input
    element lies in at most ``prod_d min(k_d, ceil(K_d / s_d))`` patches (``K_d`` the dilated span: the
    outputs that read it have ``o s`` in an interval of length ``K_d``). Per group, max over groups.
    Measured 1.5x to 2.7x the exact norm on random kernels; used only when the input size is unknown.
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    ks = w.shape[2:]
    overlap = math.prod(min(k, -(-((k - 1) * di + 1) // st)) for k, st, di in zip(ks, s, dl, strict=True))
    wg = _grouped(w, groups).reshape(groups, w.shape[0] // groups, -1)
    # The groups as one stack: certified largest singular value (no full SVD of a 512 x 4608 matrix).
    best = top_sv_stack(wg)
    factor = math.sqrt(overlap)
    value = float(np.nextafter(best * factor * (1 + 2 * EPS64), np.inf))
    return NormBound(value, f"LMT overlap sqrt({overlap})*||W_mat||", None)


# --------------------------------------------------------------------------------------------
# Choosing


def _lmt_may_beat(w: np.ndarray, groups: int, geo: ConvGeometry, value: float) -> bool:
    """Whether the LMT bound could be below ``value``: False when a LOWER estimate of it already is not.

    The LMT bound is ``sqrt(overlap) ||W_mat||`` (certified, so at least the true value); a few power
    steps give ``||W_mat v|| <= ||W_mat||``. If ``sqrt(overlap)`` times that is >= ``value``, the LMT
    bound cannot win and its certified norm (as costly as a circulant bound on a 512-channel layer) is
    skipped. Only a choice between two sound bounds depends on this estimate. Every step's ``||W_mat v||``
    (unit ``v``) is a lower estimate, so the loop stops at the first step whose largest one already rules
    LMT out (on a ResNet's 3 x 3 layers the second of eight: 0.06 -> 0.02 s CPU on a CIFAR ResNet-18).
    """
    overlap = math.prod(
        min(k, -(-((k - 1) * di + 1) // st)) for k, st, di in zip(w.shape[2:], geo.strides, geo.dilations, strict=True)
    )
    wg = _grouped(w, groups).reshape(groups, w.shape[0] // groups, -1)
    v = np.random.default_rng(0).standard_normal((groups, wg.shape[2], 1))
    est = 0.0
    for _ in range(8):
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
        u = wg @ v
        est = max(est, float(np.linalg.norm(u, axis=1).max()))
        if math.sqrt(overlap) * est * (1 - 1e-9) >= value:
            return False  # more steps could only raise the estimate
        v = np.swapaxes(wg, 1, 2) @ u
    return True


def conv_bound(
    weight: np.ndarray,
    groups: int,
    strides: Sequence[int] | None,
    dilations: Sequence[int] | None,
    pads_begin: Sequence[int] | None,
    pads_end: Sequence[int] | None,
    in_spatial: Sequence[int | None] | None,
    want_lower: bool = True,
) -> NormBound:
    """The tightest sound bound available for a Conv (each candidate is an upper bound, so the min is).

    Unknown input size: LMT. Known: exact dense SVD when the operator is small, else the circulant
    bound (and the LMT bound if it can be lower, see :func:`_lmt_may_beat`). ``lower``: a lower estimate (the dense SVD
    value, or power iteration on the real operator when affordable), never used as a bound.
    """
    w = _check(weight, groups)
    d = w.ndim - 2
    if discarded():  # the caller throws the value away (see lipgraph.norms.values_discarded)
        return NormBound(1.0, "not computed (value discarded)", None)
    if in_spatial is None or any(v is None for v in in_spatial):
        lmt = conv_lmt_bound(w, groups, strides, dilations)
        return NormBound(lmt.value, f"LMT overlap (input size unknown): {lmt.method}", None)
    geo = ConvGeometry(
        tuple(int(v) for v in in_spatial),  # type: ignore[arg-type]
        _per_axis(strides, d, 1, "strides"),
        _per_axis(dilations, d, 1, "dilations"),
        _per_axis(pads_begin, d, 0, "pads_begin"),
        _per_axis(pads_end, d, 0, "pads_end"),
    )
    outs = _out_spatial(geo, w.shape[2:])
    if min(outs) <= 0:
        raise ValueError(f"conv output size {outs} is empty")
    if dense_cost(w.shape, groups, geo) <= _DENSE_FLOP_BUDGET:
        dense = conv_dense_bound(w, groups, geo)
        if _lmt_may_beat(w, groups, geo, dense.value):
            lmt = conv_lmt_bound(w, groups, strides, dilations)
            if lmt.value < dense.value:
                return NormBound(lmt.value, lmt.method, dense.lower)
        return dense
    if math.prod(circulant_grid(geo, w.shape[2:])) > _MAX_CIRCULANT_POINTS:
        # A declared input of 10^5 x 10^5 must not allocate its grid: the size-free LMT bound.
        lmt = conv_lmt_bound(w, groups, strides, dilations)
        return NormBound(lmt.value, f"LMT overlap (input too large for the circulant bound): {lmt.method}", None)
    circ = conv_circulant_bound(w, groups, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, geo.in_spatial)
    best = circ
    if _lmt_may_beat(w, groups, geo, circ.value):
        lmt = conv_lmt_bound(w, groups, strides, dilations)
        best = circ if circ.value <= lmt.value else lmt
    lower = None
    # Power iteration costs ~2 * steps applications of the op; skip it for very large layers.
    apply_cost = math.prod(outs) * w.size
    if want_lower and apply_cost * 24 <= _POWER_LOWER_BUDGET:
        lower = conv_power_lower(w, groups, geo)
    return NormBound(best.value, best.method, lower)


# --------------------------------------------------------------------------------------------
# ConvTranspose


def conv_transpose_adjoint_geometries(
    in_spatial: Sequence[int],
    kernel_spatial: Sequence[int],
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
) -> list[ConvGeometry]:
    """Conv geometries whose norms bound a ConvTranspose (the bound is the max over the list).

    ConvTranspose = (crop or zero-extend) o T_full, where ``T_full`` scatters each input position
    ``i`` to ``i s + j dil`` on the full length ``F = (n - 1) s + (k - 1) dil + 1``, and ``T_full``
    is the adjoint of the VALID stride-s conv on length F with the same weight read as a Conv
    weight ``(C_in, C_out/g, k...)``. Zero extension (output_padding, negative total padding) is an
    isometry; cropping to the window ``[p_b, F - p_e')`` makes the op ``R T_full``, whose adjoint is
    the zero-padded conv on the window's length L with pads ``(p_b, p_e')`` -- so the norm is exactly
    that conv's. Where the ONNX spec and runtimes disagree on the split of a SAME padding, both
    splits are listed (ONNX Runtime puts the odd element of SAME_UPPER at the head, the spec at the
    tail); ``output_shape`` fixes the total crop ``F + output_padding - output_shape`` and both splits
    are listed too. A total <= 0 crops nothing: the full T_full is visible, an exact case.
    """
    d = len(kernel_spatial)
    s = _per_axis(strides, d, 1, "strides")
    dl = _per_axis(dilations, d, 1, "dilations")
    op = _per_axis(output_padding, d, 0, "output_padding")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    mode = (auto_pad or "NOTSET").upper()
    if len(in_spatial) != d:
        raise ValueError(f"input has {len(in_spatial)} spatial axes, kernel {d}")
    full = [
        (int(n) - 1) * st + (int(k) - 1) * di + 1
        for n, k, st, di in zip(in_spatial, kernel_spatial, s, dl, strict=True)
    ]
    per_axis: list[list[tuple[int, int, int]]] = []  # (L, pb, pe) candidates per axis
    has_shape = output_shape is not None and len(output_shape) > 0
    if has_shape and len(output_shape) != d:  # type: ignore[arg-type]
        raise ValueError(f"output_shape has {len(output_shape)} entries for {d} spatial axes")  # type: ignore[arg-type]
    explicit = _per_axis(pads, 2 * d, 0, "pads") if mode == "NOTSET" else None
    for a in range(d):
        f = full[a]
        if mode == "VALID" and not has_shape:
            per_axis.append([(f, 0, 0)])
            continue
        if has_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
            target = int(output_shape[a]) if has_shape else int(in_spatial[a]) * s[a]  # type: ignore[index]
            total = f + op[a] - target
            if total <= 0:
                per_axis.append([(f, 0, 0)])
                continue
            splits = {(total // 2, total - total // 2), (total - total // 2, total // 2)}
        elif mode == "NOTSET":
            assert explicit is not None
            pb, pe = explicit[a], explicit[d + a]
            if pb < 0 or pe < 0:
                raise ValueError("negative pads are not supported")
            splits = {(pb, pe)}
        else:
            raise ValueError(f"unknown auto_pad {auto_pad!r}")
        cands = []
        for pb, pe in sorted(splits):
            end = min(f, f + op[a] - pe)  # the visible window of T_full's output is [pb, end)
            cands.append((max(0, end - pb), pb, f - end if end > pb else f - pb))
        per_axis.append(cands)
    geos = []
    for combo in product(*per_axis):
        geos.append(
            ConvGeometry(tuple(c[0] for c in combo), s, dl, tuple(c[1] for c in combo), tuple(c[2] for c in combo))
        )
    return geos


def conv_transpose_bound(
    weight: np.ndarray,
    groups: int,
    in_spatial: Sequence[int | None] | None,
    strides: Sequence[int] | None = None,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    auto_pad: str | bytes | None = "NOTSET",
    want_lower: bool = True,
) -> NormBound:
    """Sound bound of a ConvTranspose with ONNX weight ``(C_in, C_out/g, k...)``: its adjoint conv's."""
    w = _check(weight, groups)
    if in_spatial is None or any(v is None for v in in_spatial):
        lmt = conv_lmt_bound(w, groups, strides, dilations)
        return NormBound(lmt.value, f"LMT overlap of the adjoint conv (input size unknown): {lmt.method}", None)
    geos = conv_transpose_adjoint_geometries(
        [int(v) for v in in_spatial], w.shape[2:], strides, dilations, pads, output_padding, output_shape, auto_pad
    )
    best: NormBound | None = None
    lower: float | None = None
    lowers: list[float | None] = []
    for geo in geos:
        if min(geo.in_spatial) <= 0:
            nb = NormBound(0.0, "empty output window", 0.0)
        else:
            nb = conv_bound(
                w, groups, geo.strides, geo.dilations, geo.pads_begin, geo.pads_end, geo.in_spatial, want_lower
            )
        if best is None or nb.value > best.value:
            best = nb
        lowers.append(nb.lower)
    assert best is not None
    lower = None if any(v is None for v in lowers) else min(v for v in lowers if v is not None)
    note = "" if len(geos) == 1 else f" (max over {len(geos)} pad splits)"
    return NormBound(best.value, f"adjoint conv: {best.method}{note}", lower)
