"""Resize and Upsample (SPEC sec. 4 "Structure": Resize nearest / linear).

With constant scales, sizes and roi, Resize is linear in the data for every mode (nearest picks,
linear and cubic interpolate with fixed weights; tf_crop_and_resize adds a constant where it
extrapolates) and separable: it resizes one axis after the other, so the operator is the Kronecker
product of per-axis matrices and its norm is the product of their norms. Each per-axis matrix is
built exactly by running a one-axis Resize (same attributes, the axis' own scale / size / roi) on basis
vectors with onnx's reference evaluator, in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import TensorProto, helper

from lipgraph.errors import Refuse
from lipgraph.norms import EPS64
from lipgraph.norms.dense import spectral_norm
from lipgraph.rules.registry import Bound, RuleContext, rule

# Attributes passed through to the one-axis probe (Resize 11..19 share their meaning and defaults).
_PASS_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
               "extrapolation_value", "antialias")
_PROBE_OPSET = 19
_MAX_AXIS = 1024  # a per-axis probe runs n + 1 basis vectors (an (n+1) x n float64 input)


@dataclass(frozen=True)
class _AxisResize:
    n: int
    scale: float | None  # exactly one of scale / size is used
    size: int | None
    roi: tuple[float, float] | None


def _const_vec(ctx: RuleContext, i: int, what: str) -> np.ndarray | None:
    """A constant input as a float64 vector; None when absent or empty."""
    if not ctx.has_input(i):
        return None
    if ctx.is_variable(i):
        raise Refuse(f"Resize {what} that depend on the input are not supported")
    val = ctx.const(i)
    if val is None:
        raise Refuse(f"the Resize {what} have no known value")
    val = np.asarray(val, dtype=np.float64).ravel()
    return val if val.size else None


def _inputs(ctx: RuleContext) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(roi, scales, sizes)`` for every opset of Resize and Upsample."""
    op = ctx.node.op_type
    if op == "Upsample" and ctx.opset < 9:
        scales = ctx.attr("scales")
        return None, (np.asarray(scales, dtype=np.float64) if scales is not None else None), None
    if op == "Upsample" or ctx.opset < 11:
        return None, _const_vec(ctx, 1, "scales"), None
    return _const_vec(ctx, 1, "roi"), _const_vec(ctx, 2, "scales"), _const_vec(ctx, 3, "sizes")


def _per_axis(ctx: RuleContext, shape: tuple[int, ...]) -> list[_AxisResize]:
    roi, scales, sizes = _inputs(ctx)
    rank = len(shape)
    axes = ctx.attr("axes")
    axes = [int(a) % rank for a in axes] if axes is not None else list(range(rank))
    if len(set(axes)) != len(axes):
        raise Refuse("repeated Resize axes")
    if (scales is None) == (sizes is None):
        raise Refuse("Resize needs exactly one of scales and sizes as constants")
    given = scales if scales is not None else sizes
    assert given is not None
    if given.size != len(axes):
        raise Refuse(f"Resize scales/sizes have {given.size} entries for {len(axes)} axes")
    if sizes is not None and (ctx.attr("keep_aspect_ratio_policy", "stretch") or "stretch") != "stretch":
        ratios = {float(sizes[j]) / shape[a] for j, a in enumerate(axes)}
        if len(ratios) > 1:  # equal ratios: the policy changes nothing
            raise Refuse("keep_aspect_ratio_policy other than 'stretch' with unequal ratios is not supported")
    if roi is not None and roi.size != 2 * len(axes):
        raise Refuse(f"Resize roi has {roi.size} entries for {len(axes)} axes")
    out: list[_AxisResize] = []
    for a in range(rank):
        if a not in axes:
            out.append(_AxisResize(shape[a], 1.0, None, None))
            continue
        j = axes.index(a)
        r = (float(roi[j]), float(roi[len(axes) + j])) if roi is not None else None
        if scales is not None:
            s = float(scales[j])
            if not s > 0 or not math.isfinite(s):
                raise Refuse(f"Resize scale {s:g} is not positive")
            out.append(_AxisResize(shape[a], s, None, r))
        else:
            out.append(_AxisResize(shape[a], None, int(sizes[j]), r))  # type: ignore[index]
    return out


def _probe_attrs(ctx: RuleContext, scale: float | None) -> list[dict[str, object]]:
    """Attribute sets of the one-axis probe. Upsample and Resize-10 map output ``y`` to ``y / scale``
    (asymmetric) and, in nearest mode, round down when enlarging and up when shrinking (onnxruntime's
    "simple" rounding for these opsets; floor is also the ONNX Upsample reference, np.repeat)."""
    mode = str(ctx.attr("mode", "nearest") or "nearest").lower()
    if mode == "bilinear":
        mode = "linear"
    if ctx.node.op_type == "Upsample" or ctx.opset < 11:
        if mode not in ("nearest", "linear"):
            raise Refuse(f"{ctx.node.op_type} mode '{mode}' is not supported")
        base = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
        if mode == "nearest":
            return [dict(base, nearest_mode="floor" if scale is None or scale >= 1 else "ceil")]
        return [base]
    attrs = {k: ctx.attr(k) for k in _PASS_ATTRS if ctx.attr(k) is not None}
    attrs["mode"] = mode
    if mode not in ("nearest", "linear", "cubic"):
        raise Refuse(f"Resize mode '{mode}' is not supported")
    if attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        raise Refuse("coordinate_transformation_mode 'tf_half_pixel_for_nn' (opset 11 only) is not supported")
    return [attrs]


@lru_cache(maxsize=256)
def _axis_matrix_cached(key: tuple) -> np.ndarray:
    attrs_items, n, scale, size, roi = key
    return _axis_matrix(dict(attrs_items), n, scale, size, roi)


def _axis_matrix(attrs: dict[str, object], n: int, scale: float | None, size: int | None,
                 roi: tuple[float, float] | None) -> np.ndarray:
    """The ``out x n`` matrix of a one-axis Resize: rows ``[0, e_1, ..., e_n]`` resized along axis 1
    (``axes = [1]``, so rows stay independent); columns are responses minus the response to 0."""
    from onnx.reference import ReferenceEvaluator

    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [n + 1, n])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    inits = []
    names = ["x", "", "", ""]
    if roi is not None:
        inits.append(helper.make_tensor("roi", TensorProto.DOUBLE, [2], list(roi)))
        names[1] = "roi"
    if scale is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [1], [scale]))
        names[2] = "scales"
    else:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [1], [int(size)]))  # type: ignore[arg-type]
        names[3] = "sizes"
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], axes=[1], **attrs)
    graph = helper.make_graph([node], "probe", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _PROBE_OPSET)])
    probe = np.vstack([np.zeros((1, n)), np.eye(n)])
    out = np.asarray(ReferenceEvaluator(model).run(None, {"x": probe})[0], dtype=np.float64)
    return (out[1:] - out[0]).T


def _scale_as_float32(s: float | None) -> float | None:
    # Scales are float32 tensors in the model: probe with the same float32 value.
    return None if s is None else float(np.float32(s))


@rule("Resize", "Upsample")
def resize(ctx: RuleContext) -> Bound:
    """Resize / Upsample with constant scales, sizes and roi: the exact operator norm.

    The op is linear in the data (nearest, linear, cubic; antialias; every coordinate transformation;
    tf_crop_and_resize's extrapolation value is a constant) and separable, so its norm is the product
    of per-axis norms; each per-axis matrix comes from a one-axis Resize on basis vectors run by onnx's
    reference evaluator, and its norm from an SVD with the rounding allowance. Nearest gives
    ``sqrt(max repeat)`` per axis (exact); linear and cubic the interpolation matrix's norm (exact).
    Upsample / Resize-10 use onnxruntime's rounding for those opsets (floor up, ceil down). Refused:
    scales, sizes or roi computed from the input, unknown input sizes, aspect-ratio policies that
    couple axes. Source: SPEC sec. 4 ("Structure"); research/bounds.md sec. 4.6.
    """
    if not ctx.is_variable(0):
        raise Refuse("the data input does not depend on the model input but a parameter does")
    lin = ctx.input_bounds[0]
    assert lin is not None
    shape = ctx.in_shape(0)
    if shape is None or any(d is None for d in shape):
        raise Refuse("Resize needs a known input shape (the per-axis operators depend on the sizes)")
    dims = tuple(int(d) for d in shape)
    axes = _per_axis(ctx, dims)
    out_shape = ctx.out_shape(0)
    value, lower = 1.0, 1.0
    for a, ax in enumerate(axes):
        if ax.roi is None and ax.size is None and ax.scale == 1.0:
            continue  # untouched axis: the identity (every mode maps integer points to themselves)
        if ax.n > _MAX_AXIS:
            raise Refuse(f"Resize axis of length {ax.n} is too long for the exact per-axis probe")
        best_v, best_l = 0.0, 0.0
        for attrs in _probe_attrs(ctx, ax.scale):
            key = (tuple(sorted(attrs.items())), ax.n, _scale_as_float32(ax.scale), ax.size, ax.roi)
            try:
                mat = _axis_matrix_cached(key)
            except (onnx.checker.ValidationError, ValueError, RuntimeError, TypeError) as exc:
                raise Refuse(f"cannot evaluate the one-axis Resize probe: {exc}") from None
            if out_shape is not None and len(out_shape) == len(axes) and out_shape[a] is not None \
                    and mat.shape[0] != out_shape[a]:
                raise Refuse(f"the one-axis probe gives {mat.shape[0]} outputs on axis {a}, the model "
                             f"{out_shape[a]}: semantics not reproduced")
            if not np.all(np.isfinite(mat)):
                raise Refuse("the Resize probe produced non-finite weights")
            nb = spectral_norm(mat)
            best_v = max(best_v, nb.value)
            best_l = max(best_l, nb.lower if nb.lower is not None else 0.0)
        value *= best_v
        lower *= best_l
    value = float(np.nextafter(value * (1 + 8 * len(axes) * EPS64), np.inf))
    return Bound(value * lin, "exact per-axis interpolation norms (Kronecker product)", factor=value, lower=lower)
