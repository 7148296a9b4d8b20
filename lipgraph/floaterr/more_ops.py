"""Float-error handlers for the ops beyond the basic classes of ``lipgraph.floaterr.local``.

Selections with a constant part (Where with a constant mask, GatherND, TopK), the soft threshold
(Shrink), p-norm pooling (LpPool, GlobalLpPool, ReduceL2, lipgraph:PowerMeanPool) and Softmax inside
the network. Each derivation is written out in docs/floating-point.md ("More ops"). They use the same
conventions as ``local``: ``err_out <= sum_i F_i err_i + rho`` with ``rho`` this op's own rounding.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.floaterr.state import Aff, NoFloatBound, OpIn, State, gamma, make_state, norm_broadcast, underflow_norm

# Library functions (pow, exp) are assumed accurate to this many units of roundoff, relatively, plus
# an absolute 2^-126 where the result falls below the normal range (flush-to-zero included).
LIBRARY_ULPS = 16
TINY = 2.0**-126  # smallest normal float32: any underflow (subnormal or flushed) loses at most this


def exact_select(a: OpIn) -> list[State]:
    """Where (constant mask), GatherND, TopK: every output entry is a copy of an input entry or a
    constant, so ``rho = 0``; the constant branch of a Where adds at most its broadcast norm to the value."""
    node = a.node
    off = 0.0
    if node.op_type == "Where":
        if a.states[0] is not None:
            raise NoFloatBound(f"Where '{node.name}' with a condition that depends on the input")
        off = sum(norm_broadcast(c, a.out_size()) for i in (1, 2) if (c := a.const(i)) is not None)
    elif any(st is not None for st in a.states[1:]):
        raise NoFloatBound(f"{node.op_type} '{node.name}' with indices that depend on the input")
    return [make_state(a.prop(o, "mag") + Aff(off), a.prop(o)) for o in range(len(node.outputs))]


def shrink(a: OpIn) -> list[State]:
    """Shrink with ``bias == lambd >= 0``: ``x - b`` above ``b``, ``x + b`` below ``-b``, else 0. One
    rounded subtraction whose exact result is at most ``|x|`` in size: ``|rho_i| <= u |x_i|``."""
    st = a.states[0]
    if st is None:
        raise NoFloatBound(f"Shrink '{a.node.name}' without a variable input")
    rho = st.fmag.scale(a.u * (1.0 + 1e-12)) + Aff(underflow_norm(1, a.out_size(), a.u))
    return [make_state(a.prop(0, "mag"), a.prop(0) + rho)]


def _window(a: OpIn) -> int:
    node = a.node
    if node.op_type in ("LpPool", "PowerMeanPool"):
        kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
        if not kernel:
            raise NoFloatBound(f"{node.op_type} '{node.name}' without kernel_shape")
        return math.prod(kernel)
    return max(1, -(-a.in_size() // max(a.out_size(), 1)))


def _underflow(a: OpIn, big_k: int, c: float) -> float:
    """How many ``TINY`` the inner sum may lose to underflow, in the units of this node's inner sum.

    ``K`` powers, a divisor and a scaling: ``(K + 2) max(c, 1)``. An ``LpPool`` that the L2-pooling
    pass wrote for ``Pow(2) -> AveragePool(/K) -> Mul(c) -> Sqrt`` runs in ONNX Runtime as that chain,
    whose sum loses at most ``(2c + 1) TINY``; the pass writes ``sqrt(c/K)`` as a following Mul ``s``
    (none when it is 1), so in this node's units that is ``(2c + 1) / s^2 = 2K + 1/s^2``.
    """
    node = a.node
    if node.op_type != "LpPool" or not node.origin:
        return 2.0 * (big_k + 2) * max(c, 1.0)
    s = 1.0
    for reader in a.graph.consumers(node.outputs[0]):
        if reader.op_type == "Mul":
            consts = [v for i in range(len(reader.inputs)) if (v := _const_of(a, reader.inputs[i])) is not None]
            if consts and consts[0].size == 1:
                s = min(s, abs(float(consts[0].reshape(-1)[0])))
    if s <= 0.0:
        raise NoFloatBound(f"LpPool '{node.name}' is scaled by zero")
    return 2.0 * (2 * big_k + 1.0 / (s * s))


def _const_of(a: OpIn, name: str):  # noqa: ANN202 - numpy array or None
    t = a.graph.tensors.get(name) if name else None
    return None if t is None or t.variable or t.value is None else np.abs(np.asarray(t.value, dtype=np.float64))


def power_pool(a: OpIn) -> list[State]:
    """p-norm pooling ``y_j = (c sum_i w_ji |x_i|^p)^(1/p)`` (LpPool, GlobalLpPool, ReduceL2, PowerMeanPool).

    The inner sum of ``K`` nonnegative powers (each from pow, ``k`` units, plus ``TINY`` on underflow),
    scaled by the averaging divisor and ``c``, has relative error ``D = (1 + k u)(1 + gamma_{K+2}) - 1``
    and absolute error at most ``A`` (:func:`_underflow` ``TINY``). Taking the p-th root (p >= 1) turns a relative
    change ``D`` into at most ``D / (1 - D)`` and an absolute one ``A`` into at most ``A^(1/p)``; the root
    itself costs ``k u`` more. So ``|rho_j| <= eta y_j + (1 + k u) A^(1/p)`` with ``||y|| <= F ||x_float||``.
    """
    node, op = a.node, a.node.op_type
    st = a.states[0]
    if st is None or any(s is not None for s in a.states[1:]):
        raise NoFloatBound(f"{op} '{node.name}' with a variable axes input")
    p = 2.0 if op == "ReduceL2" else float(node.attrs.get("p", 2))
    c = float(node.attrs.get("scale", 1.0)) if op == "PowerMeanPool" else 1.0
    if not (p >= 1.0 and math.isfinite(p) and c > 0 and math.isfinite(c)):
        raise NoFloatBound(f"{op} '{node.name}' with p={p:g}, scale={c:g}")
    k_u = LIBRARY_ULPS * a.u
    big_k = _window(a)
    d = (1.0 + k_u) * (1.0 + gamma(big_k + 2, a.u)) - 1.0
    if d >= 0.5:
        raise NoFloatBound(f"{op} '{node.name}' sums too many terms for a useful error bound")
    eta = (1.0 + d / (1.0 - d)) * (1.0 + k_u) - 1.0
    absolute = (_underflow(a, big_k, c) * TINY) ** (1.0 / p) * (1.0 + k_u)
    f = a.factors[0][0]
    rho = st.fmag.scale(f * eta) + Aff(absolute * math.sqrt(a.out_size()))
    return [make_state(st.mag.scale(f), st.err.scale(f) + rho.scale(1.0 + 1e-9))]


def _softmax_rows(a: OpIn) -> tuple[int, int]:
    """(rows, row length): opset >= 13 normalises along one axis, older opsets over all axes from ``axis``."""
    node = a.node
    shape = a.graph.shape_of(node.inputs[0])
    if shape is None or any(dim is None for dim in shape):
        raise NoFloatBound(f"{node.op_type} '{node.name}' with an unknown input shape")
    dims = [int(dim) for dim in shape]
    axis = int(node.attrs.get("axis", -1 if node.opset >= 13 else 1))
    axis = axis + len(dims) if axis < 0 else axis
    n = dims[axis] if node.opset >= 13 else math.prod(dims[axis:])
    n = max(n, 1)
    return max(1, math.prod(dims) // n), n


def _sum_exp_relative_error(a: OpIn, n: int) -> float:
    """``r`` with ``|S_float - Z| <= r Z`` for ``S = sum_j exp(y_j - max)`` over ``n`` entries (see softmax)."""
    k_u = LIBRARY_ULPS * a.u
    a_sum = 0.64 * a.u * n * (1.0 + k_u) + n * TINY  # sum over a row of the non-proportional parts, / Z
    r = (a_sum + k_u) + gamma(max(n - 1, 1), a.u) * (1.0 + a_sum + k_u)
    if r >= 0.5:
        raise NoFloatBound(f"{a.node.op_type} '{a.node.name}' over {n} entries has no useful error bound")
    return r


def reduce_log_sum_exp(a: OpIn) -> list[State]:
    """ReduceLogSumExp, computed per group of ``n`` as ``log(sum_j exp(y_j - m)) + m`` (m the maximum).

    The sum has relative error ``r`` (as in softmax), which moves its log by at most ``e = r / (1 - r)``;
    log is assumed accurate to ``k u (|log S| + 1)`` with ``log S <= log n + e``; the final addition of
    ``m`` rounds by ``u`` times the computed value. Per output ``e1 = e + k u (log n + e + 1)``, and
    ``||rho|| <= sqrt(R) e1 (1 + u) + u ||L(y_float)||`` with ``||L(y)|| <= sqrt(R) log n + F ||y||``.
    """
    node = a.node
    st = a.states[0]
    if st is None or any(s is not None for s in a.states[1:]):
        raise NoFloatBound(f"ReduceLogSumExp '{node.name}' with a variable axes input")
    n_out = max(1, a.out_size())
    n = max(1, -(-a.in_size() // n_out))
    e = _sum_exp_relative_error(a, n)
    e = e / (1.0 - e)
    k_u = LIBRARY_ULPS * a.u
    e1 = e + k_u * (math.log(n) + e + 1.0)
    f = a.factors[0][0]
    offset = math.sqrt(n_out) * math.log(n) * (1.0 + 1e-12)
    value = st.fmag.scale(f) + Aff(offset)
    rho = Aff(math.sqrt(n_out) * e1 * (1.0 + a.u)) + value.scale(a.u)
    return [make_state(st.mag.scale(f) + Aff(offset), st.err.scale(f) + rho.scale(1.0 + 1e-9))]


def softmax(a: OpIn) -> list[State]:
    """Softmax inside the network, computed as ``exp(x_i - max) / sum_j exp(x_j - max)``.

    Per row of length ``n`` (``t_i = max - x_i >= 0``, ``Z = sum exp(-t_j) >= 1``): the subtraction moves
    ``exp(-t_i)`` by at most ``1.72 u t_i exp(-t_i) <= 0.64 u``; exp adds ``k u exp(.)`` and ``TINY``; the
    sum ``gamma_{n-1}``; the division (or reciprocal and product) ``gamma_2``. With ``b`` the first three
    and ``r`` the relative error of the sum, ``|p_float - p| <= b_i / (Z (1 - r)) + p_i r / (1 - r)``,
    whose row norm is at most ``q = (0.64 u sqrt(n) (1 + k u) + k u + sqrt(n) TINY + r) / (1 - r)``; the
    output error is ``sqrt(rows) (q + gamma_2 (1 + q))``, independent of the input's size (a row's
    probabilities have norm <= 1, which also bounds the value).
    """
    node = a.node
    if any(s is not None for s in a.states[1:]) or a.states[0] is None:
        raise NoFloatBound(f"Softmax '{node.name}' with an unexpected variable input")
    rows, n = _softmax_rows(a)
    k_u = LIBRARY_ULPS * a.u
    r = _sum_exp_relative_error(a, n)
    bb = 0.64 * a.u * math.sqrt(n) * (1.0 + k_u) + k_u + math.sqrt(n) * TINY
    q = (bb + r) / (1.0 - r)
    per_row = q + gamma(2, a.u) * (1.0 + q)
    rho = Aff(math.sqrt(rows) * per_row * (1.0 + 1e-9))
    # ||softmax(y)|| <= sqrt(rows) whatever y is (each row has norm <= its sum, 1)
    return [make_state(Aff(math.sqrt(rows)), a.prop(0) + rho)]


def batched_abs_norm(a: OpIn, w: np.ndarray, vi: int) -> tuple[float, int]:
    """``(A, n)`` for a MatMul with a constant batched weight ``W[b]`` (rank > 2) and the variable ``y``.

    Output block ``b`` is ``W[b] y[s(b)]`` (or ``y[s(b)] W[b]``); numpy broadcasting uses each slice of
    ``y`` for the same number ``m`` of blocks, so ``|| (|W[b]| |y[s(b)]|)_b ||^2 <= m max_b A_b^2 ||y||^2``
    with ``A_b`` the Schur bound of ``|W[b]|``: ``A = sqrt(m) max_b A_b``; each entry sums ``n`` products.
    """
    from lipgraph.floaterr.state import schur

    y_shape = a.graph.shape_of(a.node.inputs[vi])
    if y_shape is None or any(dim is None for dim in y_shape):
        raise NoFloatBound(f"MatMul '{a.node.name}' with a batched weight and an unknown input shape")
    y_batch = tuple(int(dim) for dim in y_shape[:-2]) if len(y_shape) >= 2 else ()
    try:
        batch = np.broadcast_shapes(tuple(w.shape[:-2]), y_batch)
    except ValueError as exc:
        raise NoFloatBound(f"MatMul '{a.node.name}' with batch shapes that do not broadcast") from exc
    m = max(1, math.prod(batch) // max(1, math.prod(y_batch)))
    slices = np.abs(w).reshape(-1, w.shape[-2], w.shape[-1])
    a_max = max(schur(s, s.sum(axis=1), s.sum(axis=0)) for s in slices)
    inner = int(w.shape[-2] if vi == 0 else w.shape[-1])
    return math.sqrt(m) * a_max * (1.0 + 1e-12), inner


def gemm_variable_c(a: OpIn) -> list[State]:
    """Gemm ``alpha A' B' + beta C`` with a variable C (and at most one of A, B variable).

    Each output entry is a sum of ``n`` products plus ``beta c``: ``|rho| <= gamma'_{n+2} (|alpha| |A'| |B'|
    + |beta| |C|)`` entrywise. With one variable operand the first part is bounded through the Schur test
    of the constant one, times its float norm; with both constant it is the Frobenius norm of the constant
    matrix ``|alpha| |A'| |B'|``, which also gives the value's constant part. The C part is ``F_C`` times
    C's float norm (``F_C = |beta| sqrt(copies)`` is the rule's factor of the broadcast).
    """
    from lipgraph.floaterr.state import dot_gamma, schur

    node = a.node
    alpha = float(node.attrs.get("alpha", 1.0))
    trans = [int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))]
    var = [i for i in (0, 1) if a.states[i] is not None]
    if len(var) > 1:
        raise NoFloatBound(f"Gemm '{node.name}' multiplies two variable tensors")
    st_c = a.states[2]
    assert st_c is not None
    terms = st_c.fmag.scale(a.factors[0][2])
    offset = 0.0
    if var:
        vi = var[0]
        w = a.const(1 - vi)
        if w is None or w.ndim != 2:
            raise NoFloatBound(f"Gemm '{node.name}' without a constant matrix weight")
        w = np.abs(w.T if trans[1 - vi] else w)
        inner = int(w.shape[0] if vi == 0 else w.shape[1])
        st = a.states[vi]
        assert st is not None
        terms = terms + st.fmag.scale(abs(alpha) * schur(w, w.sum(axis=1), w.sum(axis=0)))
    else:
        mats = [a.const(0), a.const(1)]
        if any(m is None or m.ndim != 2 for m in mats):
            raise NoFloatBound(f"Gemm '{node.name}' without constant matrices A and B")
        ma, mb = (m.T if t else m for m, t in zip(mats, trans, strict=True))  # type: ignore[union-attr]
        inner = int(ma.shape[1])
        offset = float(np.linalg.norm(alpha * (ma @ mb))) * (1.0 + 1e-9)
        terms = terms + Aff(float(np.linalg.norm(abs(alpha) * (np.abs(ma) @ np.abs(mb)))) * (1.0 + 1e-9))
    rho = terms.scale(dot_gamma(inner + 2, a.u, a.u_dot)) + Aff(underflow_norm(inner + 2, a.out_size(), a.u))
    return [State(a.prop(0, "mag") + Aff(offset), a.prop(0) + rho, terms, inner + 2)]


def rms_normalization(a: OpIn) -> list[State]:
    """RMSNormalization ``y = scale x / sqrt(mean(x^2) + eps)`` over the axes from ``axis`` on.

    No cancellation: the mean of squares is a sum of nonnegative terms, so ``ms + eps`` is computed with
    relative error ``D = (1 + gamma_{n+2})(1 + (n+2) TINY / eps) - 1`` (squares, sum, divisor, the
    addition; underflow relative to ``eps``); the root (sqrt, or pow within ``k`` units) turns it into
    ``D' = D/(1-D) (1 + k u) + k u``, its reciprocal into ``D'/(1-D')``, and the reciprocal or division
    and the two products cost ``gamma_3``. So ``|rho_i| <= eta |y_i|``, and ``||y|| <= max|scale| sqrt(N)``
    for ``N`` entries whatever the input (each group's ``sum x_i^2 / (ms + eps) <= n``).
    """
    node = a.node
    st = a.states[0]
    if st is None or any(s is not None for s in a.states[1:]):
        raise NoFloatBound(f"RMSNormalization '{node.name}' with a variable scale")
    scale = a.const(1)
    eps = float(node.attrs.get("epsilon", 1e-5))
    if scale is None or not (eps > 0 and math.isfinite(eps)):
        raise NoFloatBound(f"RMSNormalization '{node.name}' without a constant scale or with epsilon <= 0")
    shape = a.graph.shape_of(node.inputs[0])
    if shape is None or any(dim is None for dim in shape):
        raise NoFloatBound(f"RMSNormalization '{node.name}' with an unknown input shape")
    dims = [int(dim) for dim in shape]
    axis = int(node.attrs.get("axis", -1))
    axis = axis + len(dims) if axis < 0 else axis
    n = max(1, math.prod(dims[axis:]))
    k_u = LIBRARY_ULPS * a.u
    d = (1.0 + gamma(n + 2, a.u)) * (1.0 + (n + 2) * TINY / eps) - 1.0
    d_root = d / (1.0 - d) * (1.0 + k_u) + k_u
    if d_root >= 0.5:
        raise NoFloatBound(f"RMSNormalization '{node.name}' over {n} entries has no useful error bound")
    eta = (1.0 + d_root / (1.0 - d_root)) * (1.0 + gamma(3, a.u)) - 1.0
    size = float(np.max(np.abs(scale))) * math.sqrt(a.out_size()) * (1.0 + 1e-12)
    f = a.factors[0][0]
    return [make_state(Aff(size), st.err.scale(f) + Aff(eta * size * (1.0 + 1e-9)))]
