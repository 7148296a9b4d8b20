"""Per-op local rounding bounds for the float error walk (``lipgraph.floaterr.walk``).

Each handler gets the states of a node's inputs (a bound on the norm of the real value, on the
float error so far, and on the magnitudes behind the last affine computation) and the node's
Lipschitz factors per input, and returns the states of its outputs. With ``F_i`` the factor of
input ``i``, every handler uses

    err_out <= sum_i F_i err_i + rho          (earlier errors, then this op's own rounding rho)
    mag_out <= ||f(0)|| + sum_i F_i mag_i     (the real value's norm)

and differs only in ``rho`` (see docs/floating-point.md for each class and its assumptions).
Everything is a norm bound affine in the input norm ``s`` (:class:`Aff`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from lipgraph.floaterr import more_ops
from lipgraph.floaterr.coverage import NO_FLOAT_MODEL
from lipgraph.floaterr.state import (
    ZERO,
    Aff,
    NoFloatBound,
    OpIn,
    State,
    dot_gamma,
    gamma,
    make_state,
    norm_broadcast,
    schur,
    underflow_norm,
)
from lipgraph.graph import Graph, Node

# ---------------------------------------------------------------------------- op classes

# No rounding at all: data movement, selection, sign changes (IEEE results are exact).
EXACT = {
    "Identity",
    "Dropout",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Slice",
    "Split",
    "Concat",
    "Expand",
    "Tile",
    "Gather",
    "DepthToSpace",
    "SpaceToDepth",
    "Relu",
    "MaxPool",
    "GlobalMaxPool",
    "ReduceMax",
    "ReduceMin",
    "Neg",
    "Abs",
    "Max",
    "Min",
    "Clip",
    "Pad",
    "GroupSort",
    "MaxMin",
    "PairSort",
    "CReLU",
}

# Elementwise functions evaluated by a math library: (f(0), ulp budget k). Assumed accuracy:
# |fl(f(y)) - f(y)| <= k u (|f(y)| + |y| + 1) per entry (absolute near zero, relative elsewhere).
ELEMENTWISE: dict[str, tuple[float, int]] = {
    "LeakyRelu": (0.0, 1),
    "PRelu": (0.0, 1),
    "Sigmoid": (0.5, 16),
    "Tanh": (0.0, 16),
    "Elu": (0.0, 16),
    "Selu": (0.0, 16),
    "Celu": (0.0, 16),
    "Softplus": (math.log(2.0), 16),
    "Softsign": (0.0, 16),
    "Erf": (0.0, 16),
    "Gelu": (0.0, 32),
    "HardSigmoid": (math.nan, 4),
    "HardSwish": (0.0, 8),
    "Sin": (0.0, 16),
    "Cos": (1.0, 16),
    "Pow": (0.0, 16),  # the Pow rule accepts only the exponent 1, which pow evaluates to within k units
    "Atan": (0.0, 16),
    "Asinh": (0.0, 16),
    "Mish": (0.0, 64),
    "Silu": (0.0, 64),
}
COMPOSITE_ULPS = 64  # lipgraph-domain activations stand for several ONNX ops


def exact(a: OpIn) -> list[State]:
    node, out = a.node, []
    for o in range(len(node.outputs)):
        off = _exact_offset(a, o)
        out.append(make_state(a.prop(o, "mag") + Aff(off), a.prop(o)))
    return out


def _exact_offset(a: OpIn, o: int) -> float:
    """||f(0)|| for the exact ops whose value at zero is not zero (constants enter)."""
    op = a.node.op_type
    if op in ("Max", "Min"):
        consts = [c for i in range(len(a.node.inputs)) if (c := a.const(i)) is not None]
        if not consts:
            return 0.0
        shape = a.graph.shape_of(a.node.outputs[0])
        zero = np.zeros([int(d) for d in shape]) if shape and all(d is not None for d in shape) else None
        if zero is None:
            raise NoFloatBound(f"the output shape of {op} '{a.node.name}' is unknown")
        val = zero
        for c in consts:
            val = np.maximum(val, c) if op == "Max" else np.minimum(val, c)
        return float(np.linalg.norm(np.broadcast_to(val, zero.shape))) * (1.0 + 1e-12)
    if op == "Clip":
        lo = a.const(1) if len(a.node.inputs) > 1 else None
        hi = a.const(2) if len(a.node.inputs) > 2 else None
        lo_v = float(lo.reshape(-1)[0]) if lo is not None and lo.size else a.node.attrs.get("min", -math.inf)
        hi_v = float(hi.reshape(-1)[0]) if hi is not None and hi.size else a.node.attrs.get("max", math.inf)
        return abs(float(np.clip(0.0, lo_v, hi_v))) * math.sqrt(a.out_size(o)) * (1.0 + 1e-12)
    if op == "Concat":  # constant pieces are part of the value
        return math.sqrt(
            sum(float(np.sum(c * c)) for i in range(len(a.node.inputs)) if (c := a.const(i)) is not None)
        ) * (1.0 + 1e-12)
    if op == "Pad":
        mode = a.node.attrs.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return 0.0
        v = a.const(2) if len(a.node.inputs) > 2 else None
        val = float(v.reshape(-1)[0]) if v is not None and v.size else float(a.node.attrs.get("value", 0.0))
        return abs(val) * math.sqrt(max(a.out_size() - a.in_size(), 0)) * (1.0 + 1e-12)
    return 0.0


def cast(a: OpIn) -> list[State]:
    """A float-to-float Cast rounds only when it narrows: ``u_target |y|`` per entry."""
    out_t = a.graph.tensors.get(a.node.outputs[0])
    to = int(a.node.attrs.get("to", 0)) or int(out_t.elem_type or 0 if out_t else 0)
    src = a.graph.tensors[a.node.inputs[0]].elem_type
    bits = {
        onnx.TensorProto.DOUBLE: 53,
        onnx.TensorProto.FLOAT: 24,
        onnx.TensorProto.FLOAT16: 11,
        onnx.TensorProto.BFLOAT16: 8,
    }
    if to not in bits:
        raise NoFloatBound(f"Cast '{a.node.name}' to a non-float type")
    mag, err = a.prop(0, "mag"), a.prop(0)
    rho = ZERO
    if src not in bits or bits[to] < bits[src]:
        u_to = 2.0 ** -bits[to]
        rho = (mag + err).scale(u_to * (1.0 + 1e-12)) + Aff(underflow_norm(1, a.out_size(), u_to))
    return [make_state(mag, err + rho)]


def affine_const(a: OpIn) -> list[State]:
    """``y = a x + b`` elementwise with constant a, b (Add/Sub/Mul/Div by a constant, BatchNormalization).

    ONNX Runtime may fuse it into the producing Conv/Gemm (folded weights, bias in the accumulator),
    so the rounding is charged against the producer's magnitudes: ``gamma_{fan+3} (|a| T + |b|)``.
    """
    node, op = a.node, a.node.op_type
    var = [i for i, st in enumerate(a.states) if st is not None]
    if len(var) != 1:
        raise NoFloatBound(f"{op} '{node.name}' has {len(var)} variable inputs")
    st = a.states[var[0]]
    assert st is not None
    n_out = a.out_size()
    if op == "BatchNormalization":
        scale, bias, mean, var_ = (a.const(i) for i in (1, 2, 3, 4))
        if any(c is None for c in (scale, bias, mean, var_)):
            raise NoFloatBound(f"BatchNormalization '{node.name}' has non-constant statistics")
        eps = float(node.attrs.get("epsilon", 1e-5))
        mult = scale / np.sqrt(var_ + eps)  # type: ignore[operator]
        shift = bias - mean * mult  # type: ignore[operator]
        off = norm_broadcast(shift, n_out)
        bterms = norm_broadcast(np.abs(bias) + np.abs(mean * mult), n_out)  # type: ignore[operator]
    else:
        c = a.const(1 - var[0])
        if c is None:
            raise NoFloatBound(f"{op} '{node.name}' has no constant operand")
        if op in ("Add", "Sub"):
            off = bterms = norm_broadcast(c, n_out)
        elif op == "Mul":
            off = bterms = 0.0
        elif op == "Div" and var[0] == 0:
            if np.any(c == 0):
                raise NoFloatBound(f"Div '{node.name}' divides by zero")
            off, bterms = 0.0, 0.0
        else:
            raise NoFloatBound(f"{op} '{node.name}' divides by the variable")
    # The rule's factor is the norm of x -> a x (broadcast included), which is also the norm of
    # x -> |a| x: it scales the magnitudes as well as the errors.
    f_in = a.factors[0][var[0]]
    terms = st.terms.scale(f_in) + Aff(bterms)
    rho = terms.scale(gamma(st.fan + 3, a.u)) + Aff(underflow_norm(st.fan + 3, n_out, a.u))
    mag = st.mag.scale(f_in) + Aff(off)
    return [State(mag, st.err.scale(f_in) + rho, terms, st.fan + 3)]


def sum_vars(a: OpIn) -> list[State]:
    """Add/Sub/Sum/Mean of variables (a constant operand may join): ``gamma_{fan+k+1} sum F_i T_i``."""
    k = len([i for i in a.node.inputs if i])
    fan = max((st.fan for st in a.states if st is not None), default=0) + k + 1
    terms = a.prop(0, "terms")
    consts = [c for i in range(len(a.node.inputs)) if (c := a.const(i)) is not None]
    off = sum((norm_broadcast(c, a.out_size()) for c in consts), 0.0)
    if a.node.op_type == "Mean":
        off /= k
    terms = terms + Aff(off)
    rho = terms.scale(gamma(fan, a.u)) + Aff(underflow_norm(fan, a.out_size(), a.u))
    return [State(a.prop(0, "mag") + Aff(off), a.prop(0) + rho, terms, fan)]


def averaging(a: OpIn) -> list[State]:
    """AveragePool / GlobalAveragePool / ReduceMean / ReduceSum: nonnegative weights, so
    ``|| P |y| || <= ||P|| ||y||`` and the sum of ``k`` terms costs ``gamma_{k+1} F ||y_float||``."""
    node = a.node
    if node.op_type == "AveragePool":
        k = int(np.prod([int(v) for v in node.attrs.get("kernel_shape", [1])]))
    else:
        k = max(1, a.in_size() // max(a.out_size(), 1))
    f = a.factors[0][0]
    st = a.states[0]
    if st is None or any(s is not None for s in a.states[1:]):
        raise NoFloatBound(f"{node.op_type} '{node.name}' with a variable axes input")
    terms = st.fmag.scale(f)
    rho = terms.scale(gamma(k + 1, a.u)) + Aff(underflow_norm(k + 1, a.out_size(), a.u))
    return [State(st.mag.scale(f), st.err.scale(f) + rho, terms, k + 1)]


def dot(a: OpIn) -> list[State]:
    """Gemm / MatMul / Conv / ConvTranspose with a constant weight: every output entry is a sum of
    ``n`` products plus a bias, ``|fl - exact| <= gamma'_n (|W| |y| + |b|)`` in any order, with or
    without FMA (Higham 2002, sec. 3.1); ``|| |W| |y| || <= A ||y||`` with ``A`` the Schur bound of |W|."""
    node, op = a.node, a.node.op_type
    var = [i for i, st in enumerate(a.states) if st is not None]
    if op == "Gemm" and 2 in var:
        return more_ops.gemm_variable_c(a)
    if len(var) != 1:
        raise NoFloatBound(f"{op} '{node.name}' has {len(var)} variable inputs")
    vi = var[0]
    st = a.states[vi]
    assert st is not None
    n_out = a.out_size()
    extra = 0  # alpha / beta scalings
    if op in ("Gemm", "MatMul"):
        w = a.const(1 - vi)
        if w is not None and w.ndim > 2 and op == "MatMul":
            big_a, inner = more_ops.batched_abs_norm(a, w, vi)
            terms = st.fmag.scale(big_a)
            rho = terms.scale(dot_gamma(inner, a.u, a.u_dot)) + Aff(underflow_norm(inner, n_out, a.u))
            return [State(st.mag.scale(a.factors[0][vi]), st.err.scale(a.factors[0][vi]) + rho, terms, inner)]
        if w is None or w.ndim > 2:
            raise NoFloatBound(f"{op} '{node.name}' without a constant matrix weight")
        if w.ndim == 1:  # a vector operand: a column on the right, a row on the left
            w = w.reshape(-1, 1) if vi == 0 else w.reshape(1, -1)
        w = np.abs(w)
        if op == "Gemm":
            alpha, beta = abs(float(node.attrs.get("alpha", 1.0))), abs(float(node.attrs.get("beta", 1.0)))
            t_w = int(node.attrs.get("transB" if vi == 0 else "transA", 0))
            inner = w.shape[1] if (t_w if vi == 0 else not t_w) else w.shape[0]
            extra = 2
        else:
            alpha, beta = 1.0, 0.0
            inner = w.shape[0] if vi == 0 else w.shape[-1]
        big_a = alpha * schur(w, w.sum(axis=1), w.sum(axis=0))
        c = a.const(2) if op == "Gemm" and len(node.inputs) > 2 else None
        off = beta * norm_broadcast(c, n_out) if c is not None else 0.0
        n = int(inner) + (1 if c is not None else 0) + extra
    elif op in ("Conv", "ConvTranspose"):
        if vi != 0:
            raise NoFloatBound(f"{op} '{node.name}' with a variable weight")
        w = a.const(1)
        if w is None or w.ndim < 3:
            raise NoFloatBound(f"{op} '{node.name}' without a constant kernel")
        g = int(node.attrs.get("group", 1))
        aw = np.abs(w)
        spatial = tuple(range(2, aw.ndim))
        if op == "Conv":  # (cout, cin/g, k...): row = output channel, column = input channel of its group
            rows = aw.sum(axis=(1, *spatial))
            per = aw.shape[0] // g
            cols = np.concatenate([aw[j * per : (j + 1) * per].sum(axis=(0, *spatial)) for j in range(g)])
            n = int(np.prod(aw.shape[1:]))
        else:  # (cin, cout/g, k...)
            cols = aw.sum(axis=(1, *spatial))
            per = aw.shape[0] // g
            rows = np.concatenate([aw[j * per : (j + 1) * per].sum(axis=(0, *spatial)) for j in range(g)])
            n = per * int(np.prod(aw.shape[2:]))
        big_a = schur(aw, rows, cols)
        b = a.const(2) if len(node.inputs) > 2 else None
        off = norm_broadcast(b, n_out) if b is not None else 0.0
        n += 1 if b is not None else 0
    else:
        raise NoFloatBound(f"no dot-product model for {op}")
    terms = st.fmag.scale(big_a) + Aff(off)
    # the absolute part: products or sums below the normal range (gamma_n alone assumes none)
    rho = terms.scale(dot_gamma(n, a.u, a.u_dot)) + Aff(underflow_norm(n, n_out, a.u))
    f = a.factors[0][vi]
    return [State(st.mag.scale(f) + Aff(off), st.err.scale(f) + rho, terms, n)]


def resize(a: OpIn) -> list[State]:
    """Resize / Upsample: nearest picks entries (exact; a tf_crop_and_resize extrapolation value is a
    constant); linear without antialias combines ``2^r`` taps per output (r axes longer than 1). Whatever
    the evaluation order (a weighted sum, or nested ``x0 + w (x1 - x0)``), the rounding is at most
    ``gamma_{2^r + 2}`` times the *unweighted* sum of the taps' magnitudes, and the unweighted tap-sum
    operator has norm at most ``sqrt(2^r prod_a c_a)`` (Schur test), with ``c_a = 2 (ceil(out_a / in_a)
    + 1)`` bounding how many outputs use one input as a tap along axis a. The weights are the ones
    ONNX Runtime computes. Cubic and antialiased filters are not modelled."""
    node = a.node
    mode = node.attrs.get("mode", "nearest")
    mode = (mode.decode() if isinstance(mode, bytes) else str(mode)).lower()
    st = a.states[0]
    if st is None or any(s is not None for s in a.states[1:]):
        raise NoFloatBound(f"Resize '{node.name}' with variable scales, sizes or roi")
    f = a.factors[0][0]
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
    extrap = float(node.attrs.get("extrapolation_value", 0.0)) if ctm == "tf_crop_and_resize" else 0.0
    off = abs(extrap) * math.sqrt(a.out_size())  # at most every output entry is the extrapolation value
    mag = st.mag.scale(f) + Aff(off)
    # Where ONNX Runtime's weights differ from the ONNX reference's, the difference of the two maps
    # counts as error too, so the "real network" may be read with either definition.
    from lipgraph.rules.registry import RuleContext
    from lipgraph.rules.resize import runtime_discrepancy

    in_b: list[float | None] = [1.0] + [None] * (len(node.inputs) - 1)
    disc = runtime_discrepancy(RuleContext(node, a.graph, in_b))
    extra = st.fmag.scale(disc)  # ||(R_ort - R_ref) y_float||, added once to the output's error
    if mode == "nearest":
        return [make_state(mag, st.err.scale(f) + extra)]
    if mode in ("linear", "bilinear") and not int(node.attrs.get("antialias", 0)):
        shape, out_shape = a.graph.shape_of(node.inputs[0]), a.graph.shape_of(node.outputs[0])
        if shape is None or out_shape is None or any(d is None for d in (*shape, *out_shape)):
            raise NoFloatBound(f"Resize '{node.name}' with unknown sizes")
        # every axis longer than 1 may interpolate (a scale like 1.1 keeps 5 -> 5 but moves the samples)
        pairs = [(int(i), int(o)) for i, o in zip(shape, out_shape, strict=True) if max(int(i), int(o)) > 1]
        rank = max(len(pairs), 1)
        uses = [2 * (math.ceil(o / max(i, 1)) + 1) for i, o in pairs]
        taps_norm = math.sqrt(2**rank * math.prod(uses or [1])) * (1.0 + 1e-12)
        terms = st.fmag.scale(taps_norm) + Aff(off)
        rho = terms.scale(gamma(2**rank + 2, a.u)) + Aff(underflow_norm(2**rank + 2, a.out_size(), a.u))
        return [State(mag, st.err.scale(f) + rho + extra, terms, 2**rank + 2)]
    raise NoFloatBound(f"no float-error model for Resize mode '{mode}' (antialias or cubic) in '{node.name}'")


def elementwise(a: OpIn) -> list[State]:
    """A unary function from a math library, accurate to ``k`` units in the sense of :data:`ELEMENTWISE`."""
    node, op = a.node, a.node.op_type
    composite = node.domain != "ai.onnx"
    if op not in ELEMENTWISE:
        raise NoFloatBound(f"no float-error model for {node.domain}:{op}")
    f0, ulps = ELEMENTWISE[op]
    if composite:
        ulps = max(ulps, COMPOSITE_ULPS)
    if op == "HardSigmoid":
        f0 = min(max(float(node.attrs.get("beta", 0.5)), 0.0), 1.0)
    var = [i for i, st in enumerate(a.states) if st is not None]
    if len(var) != 1:
        raise NoFloatBound(f"{op} '{node.name}' has {len(var)} variable inputs")
    st = a.states[var[0]]
    assert st is not None
    n = a.out_size()
    mag = a.prop(0, "mag") + Aff(abs(f0) * math.sqrt(n))
    err = a.prop(0)
    rho = (mag + err + st.fmag + Aff(math.sqrt(n))).scale(ulps * a.u * (1.0 + 1e-9))
    return [make_state(mag, err + rho)]


HANDLERS: dict[str, Callable[[OpIn], list[State]]] = {
    **{op: exact for op in EXACT},
    **{op: elementwise for op in ELEMENTWISE},
    "Cast": cast,
    "CastLike": cast,
    "BatchNormalization": affine_const,
    "Mul": affine_const,
    "Div": affine_const,
    "Sum": sum_vars,
    "Mean": sum_vars,
    "AveragePool": averaging,
    "GlobalAveragePool": averaging,
    "ReduceMean": averaging,
    "ReduceSum": averaging,
    "Gemm": dot,
    "MatMul": dot,
    "Conv": dot,
    "ConvTranspose": dot,
    "Resize": resize,
    "Upsample": resize,
    "ReduceL1": averaging,  # a sum of |x_i|: nonnegative terms, as an average without the divisor
    "Where": more_ops.exact_select,
    "GatherND": more_ops.exact_select,
    "TopK": more_ops.exact_select,
    "Shrink": more_ops.shrink,
    "LpPool": more_ops.power_pool,
    "GlobalLpPool": more_ops.power_pool,
    "ReduceL2": more_ops.power_pool,
    "PowerMeanPool": more_ops.power_pool,
    "Softmax": more_ops.softmax,
    "RMSNormalization": more_ops.rms_normalization,
    "ReduceLogSumExp": more_ops.reduce_log_sum_exp,
}


def handler_for(node: Node, graph: Graph) -> Callable[[OpIn], list[State]]:
    op = node.op_type
    if op in ("Add", "Sub"):
        n_var = sum(1 for i in node.inputs if i and graph.is_variable(i))
        return affine_const if n_var == 1 else sum_vars
    h = HANDLERS.get(op)
    if h is None or node.domain not in ("ai.onnx", "lipgraph"):
        if op in NO_FLOAT_MODEL:
            raise NoFloatBound(
                f"no float-error model for {op} (node '{node.name}'): {NO_FLOAT_MODEL[op]}; certify cannot bound "
                "how far ONNX Runtime's float logits are from the real network's (docs/floating-point.md)"
            )
        raise NoFloatBound(
            f"no float-error model for {node.domain}:{op} (node '{node.name}'); certify cannot bound how far "
            "ONNX Runtime's float logits are from the real network's (docs/floating-point.md lists the ops covered)"
        )
    return h
