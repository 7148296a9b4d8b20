"""Resize and Upsample (docs/operators.md "Structure": Resize nearest / linear).

With constant scales, sizes and roi, Resize is linear in the data for every mode (nearest picks,
linear and cubic interpolate with fixed weights; tf_crop_and_resize adds a constant where it
extrapolates) and separable: it resizes one axis after the other, so the operator is the Kronecker
product of per-axis matrices and its norm is the product of their norms. Each per-axis matrix is
built exactly by running a one-axis Resize (same attributes, the axis' own scale / size / roi) on basis
vectors with onnx's reference evaluator, in float64, and, where ONNX Runtime is installed, by
ONNX Runtime itself: the two disagree in several modes, and the larger norm is used.
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


@lru_cache(maxsize=256)
def _runtime_axis_matrix_cached(key: tuple) -> np.ndarray | None:
    attrs_items, n, scale, size, roi = key
    return _runtime_axis_matrix(dict(attrs_items), n, scale, size, roi)


# ONNX Runtime computes its interpolation weights in float32: the real-arithmetic map with the
# weights it uses is within this relative distance of what its basis responses show (a response
# like 1 - w is itself rounded once; the sum of a few products has the rest).
_RUNTIME_WEIGHT_SLACK = 1.0 + 64 * 2.0**-24
# Closer than this, ONNX Runtime's weights are the float32 roundings of the reference's exact ones
# (the same map; the rounding is float error, not a different operator).
_SAME_WEIGHTS = 1e-6


def _runtime_axis_matrix(attrs: dict[str, object], n: int, scale: float | None, size: int | None,
                         roi: tuple[float, float] | None) -> np.ndarray | None:
    """The ``out x n`` matrix of ONNX Runtime's one-axis Resize, or None without onnxruntime.

    ONNX Runtime's linear and cubic kernels take a 2-D input (both axes "spatial"), so the probe is
    ``(n + 1) x n`` with scale 1 (roi ``[0, 1]``) on axis 0: rows stay independent. Its own float32
    outputs for the basis vectors are the weights it applies.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n + 1, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = []
    names = ["x", "", "", ""]
    if roi is not None:
        inits.append(helper.make_tensor("roi", TensorProto.FLOAT, [4], [0.0, roi[0], 1.0, roi[1]]))
        names[1] = "roi"
    if scale is not None:
        inits.append(helper.make_tensor("scales", TensorProto.FLOAT, [2], [1.0, scale]))
        names[2] = "scales"
    else:
        inits.append(helper.make_tensor("sizes", TensorProto.INT64, [2], [n + 1, int(size)]))  # type: ignore[arg-type]
        names[3] = "sizes"
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Resize", names, ["y"], **attrs)
    graph = helper.make_graph([node], "probe", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _PROBE_OPSET)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        probe = np.vstack([np.zeros((1, n)), np.eye(n)]).astype(np.float32)
        out = np.asarray(sess.run(None, {"x": probe})[0], dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types; the model then cannot run in ORT either
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Refuse(f"ONNX Runtime cannot run this Resize configuration: {msg}") from None
    return (out[1:] - out[0]).T


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


def runtime_discrepancy(ctx: RuleContext) -> float:
    """An upper bound of ``||R_ort - R_ref||_2``: how far ONNX Runtime's Resize map is from the reference's.

    Both are Kronecker products of per-axis matrices, and ``A (x) B - A' (x) B' = (A - A') (x) B +
    A' (x) (B - B')`` telescopes over the axes. Zero when ONNX Runtime is not installed (nothing to
    compare) or agrees to float32 rounding. Refuses like :func:`resize`.
    """
    shape = ctx.in_shape(0)
    if shape is None or any(d is None for d in shape):
        raise Refuse("Resize needs a known input shape (the per-axis operators depend on the sizes)")
    axes = _per_axis(ctx, tuple(int(d) for d in shape))
    pairs: list[tuple[float, float, float]] = []  # (||ref||, ||ort||, ||ort - ref||) per axis
    for ax in axes:
        if ax.roi is None and ax.size is None and ax.scale == 1.0:
            continue
        for attrs in _probe_attrs(ctx, ax.scale):
            key = (tuple(sorted(attrs.items())), ax.n, _scale_as_float32(ax.scale), ax.size, ax.roi)
            ref = _axis_matrix_cached(key)
            rt = _runtime_axis_matrix_cached(key)
            if rt is None or rt.shape != ref.shape:
                pairs.append((spectral_norm(ref).value, spectral_norm(ref).value, 0.0))
                continue
            diff = spectral_norm(rt - ref).value if np.max(np.abs(rt - ref), initial=0.0) > _SAME_WEIGHTS else 0.0
            pairs.append((spectral_norm(ref).value, spectral_norm(rt).value * _RUNTIME_WEIGHT_SLACK, diff))
    total = 0.0
    for j, (_, _, d) in enumerate(pairs):
        if d == 0.0:
            continue
        term = d
        for k, (r, o, _) in enumerate(pairs):
            if k != j:
                term *= o if k < j else r
        total += term
    return float(np.nextafter(total * (1 + 8 * len(pairs) * EPS64), np.inf)) if total else 0.0


@rule("Resize", "Upsample")
def resize(ctx: RuleContext) -> Bound:
    """Resize / Upsample with constant scales, sizes and roi: the exact operator norm.

    The op is linear in the data (nearest, linear, cubic; antialias; every coordinate transformation;
    tf_crop_and_resize's extrapolation value is a constant) and separable, so its norm is the product
    of per-axis norms; each per-axis matrix comes from a one-axis Resize on basis vectors run by onnx's
    reference evaluator, and its norm from an SVD with the rounding allowance. Where ONNX Runtime is
    installed, the same one-axis probe is run there too (its own outputs on basis vectors) and the
    larger norm is used: the two differ in several modes (pytorch_half_pixel to one output,
    align_corners and tf_crop_and_resize with non-integer scales, antialias). Nearest gives
    ``sqrt(max repeat)`` per axis (exact); linear and cubic the interpolation matrix's norm (exact).
    Upsample / Resize-10 use onnxruntime's rounding for those opsets (floor up, ceil down). Refused:
    scales, sizes or roi computed from the input, unknown input sizes, aspect-ratio policies that
    couple axes. Source: docs/operators.md ("Structure")
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
            # ONNX Runtime, which certify runs, differs from the reference in several modes
            # (pytorch_half_pixel to one output, align_corners, tf_crop_and_resize with a roi,
            # antialias): bound the larger of the two maps.
            rt = _runtime_axis_matrix_cached(key)
            if rt is not None:
                if rt.shape != mat.shape or not np.all(np.isfinite(rt)):
                    raise Refuse(f"ONNX Runtime's Resize gives {rt.shape[0]} outputs on axis {a}, the "
                                 f"reference {mat.shape[0]}: semantics not reproduced")
                if np.max(np.abs(rt - mat), initial=0.0) > _SAME_WEIGHTS:
                    nr = spectral_norm(rt)
                    best_v = max(best_v, nr.value * _RUNTIME_WEIGHT_SLACK)
        value *= best_v
        lower *= best_l
    value = float(np.nextafter(value * (1 + 8 * len(axes) * EPS64), np.inf))
    return Bound(value * lin, "exact per-axis interpolation norms (Kronecker product)", factor=value, lower=lower)
