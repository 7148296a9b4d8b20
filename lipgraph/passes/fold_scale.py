"""Fold per-channel affine maps (BatchNormalization, Mul/Div/Add/Sub by constants) into Conv/Gemm/MatMul.

The norm of a folded operator ``diag(s) W`` (or ``W diag(s)``) is often far below
``max|s| * ||W||`` (docs/operators.md "Normalization", docs/composition.md). Three rewrites,
repeated until nothing changes:

1. *post-fold*: ``Linear -> affine``, the linear op's output read only by the affine op:
   ``W' = diag(s) W``, ``b' = s b + t`` (the same map; Conv->BN, Gemm->BN, MatMul->BN, Conv->Mul, ...).
2. *pre-fold*: ``affine -> Linear(s)``, every reader of the affine output a linear op whose data
   input it is: ``W' = W diag(s)``, and the shift becomes ``Add(t / s)`` before the linear ops, which
   is exact even with zero padding (padding pads ``x + t/s``, and scaling a zero gives a zero).
   With ``t != 0`` and a zero in ``s`` nothing is folded.
3. *across an activation*: ``affine -> f -> Linear(s)``, f elementwise with ``|f'| <= 1``, the
   affine output read only by f and every reader of f's output a foldable linear op. The Jacobian
   ``A diag(f') diag(s) = A diag(|s|) diag(sign(s) f')`` has norm ``<= ||A diag(|s|)||``. When f is
   positively homogeneous (Relu, LeakyRelu) and ``s > 0`` the rewrite ``f(s x + t) = s f(x + t/s)``
   is exact; otherwise the graph becomes ``f(x) -> A diag(|s|)``, whose bound is a sound bound of
   the original but whose values differ (a warning says so).

The channel axis is checked exactly: a constant must be per-channel along the axis the linear op
mixes (Conv: axis 1 of NC...; Gemm: the feature axis; MatMul: the last axis), or a scalar.
Folded nodes keep their op type (so the Conv/Gemm/MatMul rules bound them) and list every
replaced node in ``origin``.

Rounding: the rewrites are identities in real arithmetic, but s and W' are computed in float64
(``gamma / sqrt(var + eps)``: three roundings; ``1 / c``: one; each product with W: one more, two with
Gemm's alpha). The folded node records ``rho``, a proven bound ``|W_exact - W'| <= rho |W'|`` entrywise
(gamma_k over its k roundings, composed with the rho of the node or the scale it was folded from;
Higham 2002, Lemma 3.1), and its rule adds ``rho || |W'| ||_2`` (lipgraph/norms/weight_rounding.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from lipgraph.errors import ModelLoadError
from lipgraph.graph import Graph, Node, Tensor
from lipgraph.norms.weight_rounding import fold_rho
from lipgraph.passes.groupsort import const_value, is_std, known_shape

_HOMOGENEOUS = {"Relu", "LeakyRelu"}
_CONTRACTIVE = {"Relu", "LeakyRelu", "Tanh", "Softsign", "Clip"}


@dataclass
class Affine:
    """``y = s * x + t`` per channel along ``axis`` (None: scalar s and t) of x with rank ``rank``."""

    node: Node
    x: str
    s: np.ndarray  # shape (1,) or (C,)
    t: np.ndarray  # shape (1,) or (C,)
    axis: int | None
    rank: int
    ops: int = 0  # float64 roundings that formed s from the node's constants (s exact when 0)

    def rho_with(self, products: int, lin: Node) -> float:
        """rho of ``lin``'s weight after ``products`` more roundings by this s (Higham 2002, Lemma 3.1)."""
        return fold_rho(self.ops + products, lin.rho, self.node.rho)


# ------------------------------------------------------------------------- recognising affine maps


def _per_channel(c: np.ndarray, xshape: tuple[int, ...]) -> tuple[np.ndarray, int | None] | None:
    """(vector, axis) when constant ``c`` broadcasts onto x along at most one axis without enlarging it."""
    c = np.asarray(c, dtype=np.float64)
    rank = len(xshape)
    if c.ndim > rank:
        return None
    dims = (1,) * (rank - c.ndim) + tuple(c.shape)
    nonunit = [a for a, d in enumerate(dims) if d != 1]
    if any(dims[a] != xshape[a] for a in nonunit):
        return None
    if not nonunit:
        return c.reshape(1), None
    if len(nonunit) > 1:
        return None
    return c.reshape(-1), nonunit[0]


def _affine(graph: Graph, node: Node) -> Affine | None:
    if node.domain != "ai.onnx" or len(node.outputs) < 1:
        return None
    op = node.op_type
    if op == "BatchNormalization":
        if int(node.attrs.get("training_mode", 0)) != 0 or int(node.attrs.get("spatial", 1)) != 1:
            return None
        if any(o and graph.consumers(o) for o in node.outputs[1:]):
            return None
        x = node.inputs[0]
        xs = known_shape(graph, x)
        if xs is None or len(xs) < 2 or not graph.is_variable(x):
            return None
        vals = [const_value(graph, n) for n in node.inputs[1:5]]
        if len(vals) != 4 or any(v is None for v in vals):
            return None
        gamma, beta, mean, var = (np.asarray(v, dtype=np.float64).reshape(-1) for v in vals)  # type: ignore[arg-type]
        c = xs[1]
        if any(v.size != c for v in (gamma, beta, mean, var)):
            return None
        # ONNX's default epsilon is the float32 nearest 1e-5 (a float attribute), below float64's 1e-5
        eps = float(node.attrs.get("epsilon", float(np.float32(1e-5))))
        denom = np.sqrt(var + eps)
        if not np.all(np.isfinite(denom)) or np.any(denom <= 0):
            return None
        s = gamma / denom
        # s: a rounded sum, square root and quotient (three roundings); eps is the attribute's value
        return Affine(node, x, s, beta - mean * s, 1, len(xs), ops=3)
    if op not in ("Mul", "Div", "Add", "Sub") or len(node.inputs) != 2:
        return None
    var = [i for i, n in enumerate(node.inputs) if graph.is_variable(n)]
    if len(var) != 1:
        return None
    vi = var[0]
    x = node.inputs[vi]
    c = const_value(graph, node.inputs[1 - vi])
    xs = known_shape(graph, x)
    if c is None or xs is None or known_shape(graph, node.outputs[0]) != xs:
        return None
    if c.dtype.kind != "f":
        return None
    pc = _per_channel(c, xs)
    if pc is None:
        return None
    vec, axis = pc
    if not np.all(np.isfinite(vec)):
        return None
    one, zero = np.ones(1), np.zeros(1)
    ops = 0
    if op == "Mul":
        s, t = vec, zero
    elif op == "Div":
        if vi != 0 or np.any(vec == 0):
            return None
        s, t, ops = 1.0 / vec, zero, 1  # the reciprocal rounds once
    elif op == "Add":
        s, t = one, vec
    else:  # Sub
        s, t = (one, -vec) if vi == 0 else (-one, vec)
    return Affine(node, x, s, t, axis, len(xs), ops=ops)


# ------------------------------------------------------------------------- linear ops that can absorb


def _linear_channel_axis(graph: Graph, lin: Node, side: str, rank: int) -> int | None:
    """The axis of the data tensor that ``lin`` mixes (side 'in') or produces (side 'out')."""
    if lin.domain != "ai.onnx":
        return None
    op = lin.op_type
    if op == "Conv":
        if len(lin.inputs) < 2 or const_value(graph, lin.inputs[1]) is None:
            return None
        if len(lin.inputs) > 2 and lin.inputs[2] and const_value(graph, lin.inputs[2]) is None:
            return None
        return 1 if rank >= 3 else None
    if op == "Gemm":
        if rank != 2 or const_value(graph, lin.inputs[1]) is None or graph.is_variable(lin.inputs[1]):
            return None
        if np.ndim(const_value(graph, lin.inputs[1])) != 2:  # malformed: the Gemm rule refuses it
            return None
        if len(lin.inputs) > 2 and lin.inputs[2] and const_value(graph, lin.inputs[2]) is None:
            return None
        if side == "in" and int(lin.attrs.get("transA", 0)) != 0:
            return None
        return 1
    if op == "MatMul":
        w = const_value(graph, lin.inputs[1])
        if w is None or w.ndim != 2 or rank < 2 or graph.is_variable(lin.inputs[1]):
            return None
        return rank - 1
    return None


def _pure_shift(aff: Affine) -> bool:
    return bool(np.all(aff.s == 1.0))


def _fits(aff: Affine, axis: int | None) -> bool:
    return axis is not None and (aff.axis is None or aff.axis == axis)


def _vec(a: np.ndarray, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(a, dtype=np.float64), (n,)).copy()


def _const(graph: Graph, stem: str, value: np.ndarray) -> str:
    name = graph.fresh_name(stem)
    graph.tensors[name] = Tensor(name, tuple(value.shape), onnx.TensorProto.FLOAT, value, False)
    return name


def _scaled_in(graph: Graph, lin: Node, s: np.ndarray, new_input: str, origin: list[str], aff: Affine) -> Node:
    """``lin`` acting on ``x`` with its input channels scaled by ``s``: ``lin(diag(s) x) = lin'(x)``.

    ``s`` is ``aff.s`` or its absolute value (exact); one product per weight entry, hence ``rho_with(1)``."""
    w = np.asarray(const_value(graph, lin.inputs[1]), dtype=np.float64)
    attrs = dict(lin.attrs)
    if lin.op_type == "Conv":
        groups = int(attrs.get("group", 1))
        cout, cin_g = w.shape[0], w.shape[1]
        sv = _vec(s, cin_g * groups)
        w = w.copy()
        for gi in range(groups):
            rows = slice(gi * (cout // groups), (gi + 1) * (cout // groups))
            w[rows] *= sv[gi * cin_g:(gi + 1) * cin_g].reshape((1, cin_g) + (1,) * (w.ndim - 2))
    elif lin.op_type == "Gemm":
        # B is (K, M), or (M, K) with transB: scale the K input features.
        w = w * _vec(s, w.shape[1])[None, :] if int(attrs.get("transB", 0)) else w * _vec(s, w.shape[0])[:, None]
    else:  # MatMul
        w = w * _vec(s, w.shape[0])[:, None]
    inputs = [new_input, _const(graph, f"{lin.name}_W", w), *lin.inputs[2:]]
    return Node(graph.fresh_name(lin.name), lin.op_type, lin.domain, inputs, list(lin.outputs), attrs, lin.opset,
                origin=origin + list(lin.origin), rho=aff.rho_with(1, lin))


def _post_fold(graph: Graph, lin: Node, aff: Affine) -> list[Node]:
    """``aff(lin(x))`` as one linear node (plus an Add of the shift for MatMul)."""
    w = np.asarray(const_value(graph, lin.inputs[1]), dtype=np.float64)
    attrs = dict(lin.attrs)
    origin = list(lin.origin) + list(aff.node.origin)
    y = aff.node.outputs[0]
    if lin.op_type == "Conv":
        cout = w.shape[0]
        s, t = _vec(aff.s, cout), _vec(aff.t, cout)
        b = const_value(graph, lin.inputs[2]) if len(lin.inputs) > 2 and lin.inputs[2] else None
        b = np.zeros(cout) if b is None else np.asarray(b, dtype=np.float64).reshape(-1)
        if b.size != cout:  # ONNX Runtime would reject this model; do not fold it into a wrong shape
            raise ModelLoadError(f"node '{lin.name}' (Conv) has a bias of {b.size} values for {cout} output "
                                 "channels; the model is malformed")
        w = w * s.reshape((cout,) + (1,) * (w.ndim - 1))
        inputs = [lin.inputs[0], _const(graph, f"{lin.name}_W", w), _const(graph, f"{lin.name}_B", s * b + t)]
        return [Node(graph.fresh_name(lin.name), "Conv", "ai.onnx", inputs, [y], attrs, lin.opset, origin=origin,
                     rho=aff.rho_with(1, lin))]
    if lin.op_type == "Gemm":
        trans_b = int(attrs.get("transB", 0))
        m = w.shape[0] if trans_b else w.shape[1]
        s, t = _vec(aff.s, m), _vec(aff.t, m)
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        w = alpha * (w * s[:, None] if trans_b else w * s[None, :])
        c = const_value(graph, lin.inputs[2]) if len(lin.inputs) > 2 and lin.inputs[2] else None
        try:
            c_new = t if c is None else s * (beta * np.asarray(c, dtype=np.float64)) + t
        except ValueError:  # C does not broadcast to the M outputs
            raise ModelLoadError(f"node '{lin.name}' (Gemm) has a C of shape {np.shape(c)} for {m} outputs; "
                                 "the model is malformed") from None
        attrs.update(alpha=1.0, beta=1.0)
        inputs = [lin.inputs[0], _const(graph, f"{lin.name}_W", w), _const(graph, f"{lin.name}_C", c_new)]
        # two products per entry (by s, then by alpha: exact when alpha is 1, counted anyway)
        return [Node(graph.fresh_name(lin.name), "Gemm", "ai.onnx", inputs, [y], attrs, lin.opset, origin=origin,
                     rho=aff.rho_with(2, lin))]
    # MatMul x @ W, W 2-D (K, M)
    m = w.shape[1]
    s, t = _vec(aff.s, m), _vec(aff.t, m)
    w = w * s[None, :]
    if not np.any(t):
        inputs = [lin.inputs[0], _const(graph, f"{lin.name}_W", w)]
        return [Node(graph.fresh_name(lin.name), "MatMul", "ai.onnx", inputs, [y], attrs, lin.opset, origin=origin,
                     rho=aff.rho_with(1, lin))]
    mid = graph.fresh_name(f"{lin.name}_out")
    graph.tensors[mid] = Tensor(mid, known_shape(graph, y), graph.tensors[y].elem_type, None, True)
    mm = Node(graph.fresh_name(lin.name), "MatMul", "ai.onnx", [lin.inputs[0], _const(graph, f"{lin.name}_W", w)],
              [mid], attrs, lin.opset, origin=origin, rho=aff.rho_with(1, lin))
    add = Node(graph.fresh_name(f"{lin.name}_shift"), "Add", "ai.onnx", [mid, _const(graph, f"{lin.name}_B", t)],
               [y], {}, lin.opset, origin=list(origin))
    return [mm, add]


# ------------------------------------------------------------------------- the three rewrites


def _readers_foldable(graph: Graph, tensor: str, aff: Affine) -> list[Node] | None:
    """The readers of ``tensor`` when each is a linear op taking it as data input on the affine's axis."""
    if graph.is_graph_output(tensor):
        return None
    readers = graph.consumers(tensor)
    if not readers:
        return None
    for r in readers:
        if r.inputs[0] != tensor or tensor in r.inputs[1:]:
            return None
        if not _fits(aff, _linear_channel_axis(graph, r, "in", aff.rank)):
            return None
        if not _products_normal(graph, r, aff):
            return None
    return readers


_NORMAL_MIN = 2.0**-1022  # the smallest normal float64


def _products_normal(graph: Graph, lin: Node, aff: Affine) -> bool:
    """Whether every nonzero product of ``lin``'s weight (and Gemm's alpha) with the scale is a normal float64.

    ``rho`` counts relative roundings (Higham 2002, Lemma 3.1), which hold only without underflow: a product
    that lands in the subnormal range (or flushes to 0) may lose most of its value, so such a fold is not made
    and the generic rules bound the unfolded ops. Checked on the smallest magnitudes, conservatively."""
    w = const_value(graph, lin.inputs[1]) if len(lin.inputs) > 1 and lin.inputs[1] else None
    if w is None:
        return False

    def smallest(a: np.ndarray) -> float:
        a = np.abs(np.asarray(a, dtype=np.float64))
        a = a[a != 0]
        return float(a.min()) if a.size else np.inf

    alpha = abs(float(lin.attrs.get("alpha", 1.0))) if lin.op_type == "Gemm" else 1.0
    s_min, w_min = smallest(aff.s), smallest(w)
    if s_min == np.inf or w_min == np.inf:
        return True  # a zero scale or weight: every product is an exact zero
    return s_min >= _NORMAL_MIN and w_min * s_min * min(alpha, 1.0) >= 2 * _NORMAL_MIN


def _shift_node(graph: Graph, aff: Affine, src: str, shift: np.ndarray) -> tuple[Node, str]:
    """``Add(src, shift)`` with the shift shaped to broadcast along the affine's axis only."""
    shape = [1] * aff.rank
    if aff.axis is not None and shift.size > 1:
        shape[aff.axis] = shift.size
    out = graph.fresh_name(f"{aff.node.name}_shifted")
    graph.tensors[out] = Tensor(out, known_shape(graph, aff.x), graph.tensors[aff.x].elem_type, None, True)
    cname = _const(graph, f"{aff.node.name}_shift", np.asarray(shift, dtype=np.float64).reshape(shape))
    node = Node(graph.fresh_name(f"{aff.node.name}_shift"), "Add", "ai.onnx", [src, cname], [out], {},
                aff.node.opset, origin=list(aff.node.origin))
    return node, out


def _try_post(graph: Graph) -> bool:
    for node in graph.nodes:
        aff = _affine(graph, node)
        if aff is None:
            continue
        lin = graph.producer(aff.x)
        if lin is None or graph.is_graph_output(aff.x) or len(graph.consumers(aff.x)) != 1:
            continue
        if lin.outputs[0] != aff.x or not graph.is_variable(lin.inputs[0]):
            continue
        if not _fits(aff, _linear_channel_axis(graph, lin, "out", aff.rank)):
            continue
        if lin.op_type == "MatMul" and _pure_shift(aff):
            continue  # MatMul has no bias: the shift would stay an Add
        if not _products_normal(graph, lin, aff):
            continue
        graph.replace([lin, node], _post_fold(graph, lin, aff))
        return True
    return False


def _try_pre(graph: Graph) -> bool:
    for node in graph.nodes:
        aff = _affine(graph, node)
        if aff is None:
            continue
        if _pure_shift(aff):
            continue  # a shift before a linear op does not change its bound; folding it gains nothing
        readers = _readers_foldable(graph, node.outputs[0], aff)
        if readers is None:
            continue
        new: list[Node] = []
        src = aff.x
        if np.any(aff.t):
            if np.any(aff.s == 0):
                continue
            add, src = _shift_node(graph, aff, aff.x, aff.t / aff.s)
            new.append(add)
        new += [_scaled_in(graph, r, aff.s, src, list(node.origin), aff) for r in readers]
        graph.replace([node, *readers], new)
        return True
    return False


def _try_across(graph: Graph) -> bool:
    for node in graph.nodes:
        aff = _affine(graph, node)
        if aff is None or _pure_shift(aff):
            continue
        y = node.outputs[0]
        f_readers = [] if graph.is_graph_output(y) else graph.consumers(y)
        if len(f_readers) != 1:
            continue
        f = f_readers[0]
        if not is_std(f, *_CONTRACTIVE) or f.inputs[0] != y or y in f.inputs[1:]:
            continue
        if f.op_type == "LeakyRelu" and abs(float(f.attrs.get("alpha", 0.01))) > 1:
            continue
        if f.op_type == "Clip" and any(i and graph.is_variable(i) for i in f.inputs[1:]):
            continue
        readers = _readers_foldable(graph, f.outputs[0], aff)
        if readers is None:
            continue
        exact = f.op_type in _HOMOGENEOUS and bool(np.all(aff.s > 0))
        new: list[Node] = []
        src = aff.x
        if exact and np.any(aff.t):
            add, src = _shift_node(graph, aff, aff.x, aff.t / aff.s)
            new.append(add)
        f_new = Node(graph.fresh_name(f.name), f.op_type, f.domain, [src, *f.inputs[1:]], list(f.outputs),
                     dict(f.attrs), f.opset, origin=list(f.origin), bound_only=f.bound_only or not exact)
        new.append(f_new)
        scale = aff.s if exact else np.abs(aff.s)
        origin = list(node.origin) + list(f.origin)
        new += [_scaled_in(graph, r, scale, f.outputs[0], origin, aff) for r in readers]
        if not exact:
            graph.warnings.append(
                f"folded |scale| of '{node.name}' across '{f.name}' ({f.op_type}) into "
                + ", ".join(r.name for r in readers)
                + ": a bound-only rewrite (sound, docs/operators.md); the analysis graph's values there differ"
                " from the model's"
            )
        graph.replace([node, f, *readers], new)
        return True
    return False


def fold_scales(graph: Graph) -> None:
    """Fold per-channel scales and shifts into adjacent linear ops until nothing changes."""
    for attempt in (_try_post, _try_pre, _try_across):
        while attempt(graph):
            pass
    # A second round: pre-folds can expose post-folds and vice versa (bounded: each fold removes a node).
    while _try_post(graph) or _try_pre(graph) or _try_across(graph):
        pass
