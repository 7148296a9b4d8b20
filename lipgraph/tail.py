"""The affine tail of a network: the linear ops between the last nonlinearity and the logits.

When ``logits = A h + b`` for a tensor ``h`` that is ``L_h``-Lipschitz in the input, the logit
difference ``F_t - F_i`` is ``||a_t - a_i||_2 L_h``-Lipschitz (docs/certificate.md, LMT sec. 4), which is
never worse than ``sqrt(2) L``. This module walks back from the logits through a chain of ops
that are linear in their single variable input (Gemm / MatMul with a constant weight, Add / Sub
of a constant, Mul / Div by a constant, Neg, and shape-only ops), and composes the chain into the
matrix ``A`` (rows = logits, columns = the flattened ``h`` of one sample) by pushing the standard
basis of ``h`` through it in float64. Biases are dropped: they do not change ``A``.

Rounding (docs/floating-point.md): the chain is also evaluated with the absolute values of its constants,
``|A|``; the float64 composition error is at most ``gamma_n |A|`` entrywise (Higham, Accuracy and
Stability of Numerical Algorithms, sec. 3.5), with ``n`` the total inner dimension plus the number
of ops, and :meth:`TailCandidate.pair_norms` adds that term, so every returned norm is an upper
bound of the real ``||a_t - a_i||_2``.

Any op outside that list ends the tail (which is always sound: the tail is then shorter).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lipgraph.graph import FLOAT_TYPES, Graph, Node
from lipgraph.norms.dense import row_norms_up

EPS64 = float(2.0**-53)
MAX_TAIL_DIM = 16384  # columns of A: the basis of h is pushed through the tail
BASIS_BLOCK = 512  # basis vectors pushed through at once (bounds the intermediates' memory)

_LINEAR_OPS = {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Identity", "Dropout", "Flatten", "Reshape",
    "Squeeze", "Unsqueeze", "Transpose", "Cast",
}


class _NotAffine(Exception):
    """This node (in this configuration) is not a per-sample linear map we can compose."""


@dataclass
class TailCandidate:
    """``logits = matrix @ h_flat + b`` per sample, with ``h`` ``l_h``-Lipschitz in the input."""

    h: str
    l_h: float
    matrix: np.ndarray  # (K, d) float64
    abs_matrix: np.ndarray  # (K, d): the chain with |constants|, for the rounding term
    n_ops: int  # total inner dimension + number of ops (for gamma_n)
    ops: list[str] = field(default_factory=list)
    rho: float = 0.0  # constants a pass computed in float64 (folded weights): matrix within rho |A| of exact

    @property
    def gamma(self) -> float:
        n = self.n_ops + self.matrix.shape[1] + 8
        return 2.0 * n * EPS64 / (1.0 - 2.0 * n * EPS64)

    def pair_norms(self, t: int) -> np.ndarray:
        """Upper bounds of ``||a_t - a_i||_2`` for every i (the i = t entry is meaningless)."""
        diff = row_norms_up(self.matrix - self.matrix[t])  # (the difference rounds: inside gamma's count)
        absn = row_norms_up(self.abs_matrix)
        g = self.gamma
        up = diff * (1.0 + g) + (g + self.rho) * (absn + absn[t]) * (1.0 + g)
        return np.nextafter(up, np.inf)

    def row_norms(self) -> np.ndarray:
        """Upper bounds of ``||a_i||_2`` (for a single-logit model)."""
        g = self.gamma
        absn = row_norms_up(self.abs_matrix)
        up = row_norms_up(self.matrix) * (1.0 + g) + (g + self.rho) * absn * (1.0 + g)
        return np.nextafter(up, np.inf)


def find_tail(
    graph: Graph, logits: str, tensor_bounds: dict[str, float], max_dim: int = MAX_TAIL_DIM
) -> list[TailCandidate]:
    """Every usable split point of the affine tail, shortest tail first (may be empty)."""
    chain: list[tuple[Node, int]] = []
    name = logits
    while True:
        node = _producer(graph, name)
        if node is None or not _is_tail_op(node):
            break
        var = [k for k, i in enumerate(node.inputs) if i and graph.is_variable(i)]
        if len(var) != 1 or node.outputs[0] != name:
            break
        chain.insert(0, (node, var[0]))
        name = node.inputs[var[0]]
    out: list[TailCandidate] = []
    for k in range(len(chain) - 1, -1, -1):
        node, vi = chain[k]
        h = node.inputs[vi]
        l_h = tensor_bounds.get(h)
        shape = graph.shape_of(h)
        if l_h is None or shape is None or len(shape) < 1 or any(d is None for d in shape) or shape[0] != 1:
            continue
        d = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        if d < 1 or d > max_dim:
            continue
        try:
            cand = _compose(graph, chain[k:], shape, d, l_h, h)
        except _NotAffine:
            break  # longer tails contain this op too
        out.append(cand)
    return out


def _is_tail_op(node: Node) -> bool:
    if node.domain == "lipgraph":  # a linear region composed by lipgraph/passes/linear_maps.py
        return node.op_type == "LinearMap"
    return node.domain == "ai.onnx" and node.op_type in _LINEAR_OPS


def _producer(graph: Graph, name: str) -> Node | None:
    for n in graph.nodes:
        if name in n.outputs:
            return n
    return None


def _compose(
    graph: Graph, chain: list[tuple[Node, int]], shape: tuple[int | None, ...], d: int, l_h: float, h: str
) -> TailCandidate:
    a, aa, n_ops = dense_segment(graph, chain, shape, d)
    ops = [f"{n.op_type}:{n.name}" for n, _ in chain]
    return TailCandidate(h, float(l_h), a, aa, n_ops, ops, rho=segment_rho(chain))


def segment_rho(chain: list[tuple[Node, int]]) -> float:
    """Relative error, entrywise against the chain on absolute values, of a chain whose constants a pass
    computed in float64 (``Node.rho``; a composed LinearMap carries its members' as ``rho``): every entry
    of the composed matrix is a sum of products of one constant entry per op, each within ``rho_i`` of
    its exact value, so ``prod (1 + rho_i) - 1`` bounds it (Higham 2002, Lemma 3.1). 0 for the model's own."""
    from lipgraph.norms.weight_rounding import compose

    return compose(*(float(n.attrs.get("rho", 0.0)) if n.op_type == "LinearMap" else n.rho for n, _ in chain))


def dense_segment(
    graph: Graph, chain: list[tuple[Node, int]], shape: tuple[int | None, ...], d: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """A run of linear ops as a dense float64 matrix (outputs x inputs), the matrix of the absolute values
    it was summed from (for the rounding bound), and the number of roundings along the way: the standard
    basis of the run's input pushed through every op. Raises ``_NotAffine`` when it does not fit."""
    in_shape = [int(s) for s in shape[1:]]  # type: ignore[arg-type]
    # The basis goes through in blocks of columns: all d at once held d copies of every intermediate (and of a
    # conv's patch matrix) at the same time, 470 MiB for a 3 x 32 x 32 input into an 8-channel conv; a block's
    # columns come out the same, the operators being applied to each basis vector independently.
    a = aa = None
    n_ops = 0
    for lo in range(0, d, BASIS_BLOCK):
        hi = min(d, lo + BASIS_BLOCK)
        x = np.zeros((hi - lo, d), dtype=np.float64)
        x[np.arange(hi - lo), np.arange(lo, hi)] = 1.0
        x = x.reshape((hi - lo, *in_shape))
        xa = x.copy()
        ops = 0
        for node, vi in chain:
            try:
                x, inner = _apply(graph, node, vi, x, absolute=False)
                xa, _ = _apply(graph, node, vi, xa, absolute=True)
            except (ValueError, IndexError, TypeError) as exc:  # shapes that do not fit a per-sample map
                raise _NotAffine(str(exc)) from None
            ops += inner + 1
        if x.ndim < 1 or x.shape[0] != hi - lo:
            raise _NotAffine("the batch axis was lost")
        k = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim > 1 else 1
        if a is None:
            a, aa, n_ops = np.empty((k, d)), np.empty((k, d)), ops
        elif a.shape[0] != k or ops != n_ops:
            raise _NotAffine("the output size depends on the input block")
        a[:, lo:hi] = x.reshape(hi - lo, k).T
        aa[:, lo:hi] = np.abs(xa.reshape(hi - lo, k).T)
    assert a is not None and aa is not None
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(aa))):
        raise _NotAffine("non-finite constants")
    return a, aa, n_ops


def _const(graph: Graph, node: Node, i: int) -> np.ndarray:
    if i >= len(node.inputs) or not node.inputs[i]:
        raise _NotAffine("missing constant")
    t = graph.tensors.get(node.inputs[i])
    if t is None or t.variable or t.value is None:
        raise _NotAffine("operand without a known value")
    return np.asarray(t.value)


def _float_const(graph: Graph, node: Node, i: int) -> np.ndarray:
    c = _const(graph, node, i)
    if c.dtype.kind not in "fiub":
        raise _NotAffine("non-numeric constant")
    c = c.astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise _NotAffine("non-finite constant")
    return c


def _check_batch_axis(x: np.ndarray, c: np.ndarray) -> None:
    """Refuse a constant that would broadcast over the batch axis.

    x carries the basis (or a batch of samples) on axis 0 where the model has a batch of one: a
    constant of full rank whose axis 0 is not 1 copies each sample ``c.shape[0]`` times in the
    model, however ``np.broadcast_shapes`` pairs it with x's axis 0 (equal sizes pair silently and
    would mix basis vectors with the constant's rows)."""
    if c.ndim > x.ndim:
        raise _NotAffine("the constant has more axes than the data")
    if c.ndim == x.ndim and c.shape[0] != 1:
        raise _NotAffine("the constant broadcasts over the batch axis")


def _broadcast_to(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    _check_batch_axis(x, c)
    shape = np.broadcast_shapes(x.shape, c.shape)
    if shape[0] != x.shape[0]:
        raise _NotAffine("the constant broadcasts over the batch axis")
    return np.broadcast_to(x, shape)


def _apply(graph: Graph, node: Node, vi: int, x: np.ndarray, absolute: bool) -> tuple[np.ndarray, int]:
    """The linear part of ``node`` applied to ``x`` (batch on axis 0); returns (result, inner dim)."""
    op, attrs = node.op_type, node.attrs
    m = x.shape[0]

    def mag(c: np.ndarray) -> np.ndarray:
        return np.abs(c) if absolute else c

    if op == "LinearMap" and node.domain == "lipgraph":
        # Its matrix (and, for the rounding term, the bound on its absolute values) acts on the flat sample.
        mat = _float_const(graph, node, 2 if absolute else 1)
        y = x.reshape(m, -1) @ mat.T
        return y.reshape((m, *[int(v) for v in attrs["out_shape"][1:]])), int(attrs.get("inner", 0))
    if op == "Conv":  # reached only from lipgraph.chain (the affine tail does not take Conv)
        from lipgraph.norms.conv_apply import conv2d_linear

        if vi != 0:
            raise _NotAffine("Conv with a variable weight")
        w = _float_const(graph, node, 1)
        return conv2d_linear(x, np.abs(w) if absolute else w, attrs)
    if op == "Gemm":
        if vi != 0 or int(attrs.get("transA", 0)) != 0 or x.ndim != 2:
            raise _NotAffine("Gemm with a transposed or non-matrix variable operand")
        w = _float_const(graph, node, 1)
        if w.ndim != 2:
            raise _NotAffine("Gemm weight is not a matrix")
        if int(attrs.get("transB", 0)):
            w = w.T
        alpha = float(attrs.get("alpha", 1.0))
        return (abs(alpha) if absolute else alpha) * (x @ mag(w)), int(w.shape[0])
    if op == "MatMul":
        w = _float_const(graph, node, 1 - vi)
        if w.ndim > 2:
            raise _NotAffine("batched MatMul weight")
        if vi == 0:
            if x.ndim < 2 or (w.ndim == 2 and x.shape[-1] != w.shape[0]):
                raise _NotAffine("MatMul shapes")
            return x @ mag(w), int(w.shape[0])
        if w.ndim != 2 or x.ndim < 3:
            raise _NotAffine("left MatMul needs a per-sample matrix")
        return mag(w) @ x, int(w.shape[1])
    if op in ("Add", "Sub"):
        if len([i for i in node.inputs if i]) != 2:
            raise _NotAffine("arity")
        c = _float_const(graph, node, 1 - vi)
        y = _broadcast_to(x, c)
        if op == "Sub" and vi == 1 and not absolute:
            y = -y
        return np.array(y), 0
    if op in ("Mul", "Div"):
        c = _float_const(graph, node, 1 - vi)
        if op == "Div":
            if vi != 0 or np.any(c == 0):
                raise _NotAffine("division by the variable or by zero")
            c = 1.0 / c
        _check_batch_axis(x, c)
        y = x * mag(c)
        if y.shape[0] != m:
            raise _NotAffine("broadcast over the batch axis")
        return y, 0
    if op == "Neg":
        return (x if absolute else -x), 0
    if op == "Identity":
        return x, 0
    if op == "Dropout":
        if len(node.inputs) > 2 and node.inputs[2]:
            mode = _const(graph, node, 2)
            if bool(np.asarray(mode).reshape(-1)[0]):
                raise _NotAffine("Dropout in training mode")
        return x, 0
    if op == "Cast":
        if int(attrs.get("to", 0)) not in FLOAT_TYPES:
            raise _NotAffine("Cast to a non-float type")
        return x, 0
    if op == "Flatten":
        axis = int(attrs.get("axis", 1))
        if axis < 0:
            axis += x.ndim
        if axis != 1:
            raise _NotAffine("Flatten not at axis 1")
        return x.reshape(m, -1), 0
    if op == "Reshape":
        target = [int(v) for v in _const(graph, node, 1).reshape(-1)]
        allowzero = int(attrs.get("allowzero", 0))
        one = (1, *x.shape[1:])
        resolved = [one[i] if (v == 0 and not allowzero and i < len(one)) else v for i, v in enumerate(target)]
        try:
            s1 = np.empty(one, dtype=np.int8).reshape(resolved).shape
        except ValueError:
            raise _NotAffine("Reshape target") from None
        if not s1 or s1[0] != 1:
            raise _NotAffine("Reshape mixes the batch axis")
        return x.reshape((m, *s1[1:])), 0
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = [int(v) for v in _const(graph, node, 1).reshape(-1)]
        if axes is None:
            # without axes, Squeeze would also drop the batch axis of the batch-1 analysis graph
            raise _NotAffine(f"{op} without axes")
        rank = x.ndim + (len(axes) if op == "Unsqueeze" else 0)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        if 0 in axes:
            raise _NotAffine("squeezes the batch axis")
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)), 0
        return np.expand_dims(x, tuple(axes)), 0
    if op == "Transpose":
        perm = attrs.get("perm")
        if perm is None:
            perm = list(range(x.ndim))[::-1]
        perm = [int(p) for p in perm]
        if not perm or perm[0] != 0:
            raise _NotAffine("Transpose moves the batch axis")
        return np.transpose(x, perm), 0
    raise _NotAffine(op)
