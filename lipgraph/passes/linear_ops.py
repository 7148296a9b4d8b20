"""Read a Gemm / MatMul / Conv / ConvTranspose node as a linear operator on its one variable input.

Shared by the passes that recognise the published 1-Lipschitz layer families (power series of one
operator, residual and plain sandwiches): they compare operators (the same kernel, a transpose)
and hand the constants to their rules. Biases never change a Jacobian, so they are not kept.
Anything unusual (a variable weight, unknown sizes, ``auto_pad``, ``output_shape``) gives None,
and the caller leaves the node to its generic rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import const_value, is_std, known_shape


@dataclass
class LinearOp:
    """``y = op(x) + bias``. Dense: ``matrix`` (out x in) acts on the last axis of x.

    Conv / ConvTranspose: ``kernel`` as stored, with ``group``, ``strides``, ``dilations``, the
    resolved begin/end ``pads`` and the input's spatial size. ConvTranspose is kept only when it is
    exactly the adjoint of the zero-padded Conv with the same kernel and attributes whose input has
    the ConvTranspose's output size (``spatial`` then is that Conv's input size, i.e. this node's
    output size).
    """

    node: Node
    x: str
    kind: str  # "dense", "conv" or "conv_transpose"
    matrix: np.ndarray | None = None
    kernel: np.ndarray | None = None
    group: int = 1
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads_begin: tuple[int, ...] = ()
    pads_end: tuple[int, ...] = ()
    spatial: tuple[int, ...] = ()

    def geometry(
        self,
    ) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return self.group, self.strides, self.dilations, self.pads_begin, self.pads_end, self.spatial


def _const_f64(graph: Graph, name: str) -> np.ndarray | None:
    v = const_value(graph, name)
    if v is None or np.asarray(v).dtype.kind != "f":
        return None
    v = np.asarray(v, dtype=np.float64)
    return v if np.all(np.isfinite(v)) else None


def _bias_ok(graph: Graph, node: Node, idx: int) -> bool:
    """An absent or constant bias (a variable one would be a second data path)."""
    return idx >= len(node.inputs) or not node.inputs[idx] or not graph.is_variable(node.inputs[idx])


def linear_op(graph: Graph, node: Node) -> LinearOp | None:
    """The node as a :class:`LinearOp` of its variable input, or None."""
    if not node.inputs or not graph.is_variable(node.inputs[0]):
        return None
    x = node.inputs[0]
    if is_std(node, "MatMul"):
        w = _const_f64(graph, node.inputs[1]) if len(node.inputs) == 2 else None
        xs = known_shape(graph, x)
        if w is None or w.ndim != 2 or xs is None or len(xs) < 2 or xs[-1] != w.shape[0]:
            return None
        return LinearOp(node, x, "dense", matrix=w.T.copy())
    if is_std(node, "Gemm"):
        if int(node.attrs.get("transA", 0)) != 0 or not _bias_ok(graph, node, 2):
            return None
        w = _const_f64(graph, node.inputs[1]) if len(node.inputs) >= 2 else None
        if w is None or w.ndim != 2:
            return None
        alpha = float(node.attrs.get("alpha", 1.0))
        mat = w if int(node.attrs.get("transB", 0)) else w.T
        return LinearOp(node, x, "dense", matrix=alpha * mat)
    if is_std(node, "Conv", "ConvTranspose"):
        return _conv_op(graph, node, x)
    return None


def _ints(node: Node, name: str, d: int, default: int) -> tuple[int, ...] | None:
    v = node.attrs.get(name)
    if v is None or len(v) == 0:
        return (default,) * d
    out = tuple(int(a) for a in v)
    return out if len(out) == d else None


def _conv_op(graph: Graph, node: Node, x: str) -> LinearOp | None:
    if len(node.inputs) < 2 or not _bias_ok(graph, node, 2):
        return None
    w = _const_f64(graph, node.inputs[1])
    xs, ys = known_shape(graph, x), known_shape(graph, node.outputs[0])
    if w is None or w.ndim < 3 or xs is None or ys is None or len(xs) != w.ndim or len(ys) != w.ndim:
        return None
    d = w.ndim - 2
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", ""):
        return None
    strides, dil = _ints(node, "strides", d, 1), _ints(node, "dilations", d, 1)
    pads = _ints(node, "pads", 2 * d, 0)
    ks = node.attrs.get("kernel_shape")
    if strides is None or dil is None or pads is None or (ks and tuple(int(k) for k in ks) != w.shape[2:]):
        return None
    if min(strides + dil) < 1 or min(pads) < 0:
        return None
    group = int(node.attrs.get("group", 1))
    if group < 1:
        return None
    if node.op_type == "Conv":
        if xs[1] != group * w.shape[1] or w.shape[0] % group:
            return None
        return LinearOp(
            node,
            x,
            "conv",
            kernel=w,
            group=group,
            strides=strides,
            dilations=dil,
            pads_begin=pads[:d],
            pads_end=pads[d:],
            spatial=tuple(xs[2:]),
        )
    # ConvTranspose: the adjoint of Conv(kernel) on an input of this node's output size, exactly when
    # that Conv maps the output size back to this node's input size (no output_shape cropping games).
    if node.attrs.get("output_shape") or xs[1] != w.shape[0] or w.shape[0] % group:
        return None
    out_sp = tuple(ys[2:])
    for n, m, k, s, dl, pb, pe in zip(out_sp, xs[2:], w.shape[2:], strides, dil, pads[:d], pads[d:], strict=True):
        if (n + pb + pe - ((k - 1) * dl + 1)) // s + 1 != m or n + pb + pe < (k - 1) * dl + 1:
            return None
    return LinearOp(
        node,
        x,
        "conv_transpose",
        kernel=w,
        group=group,
        strides=strides,
        dilations=dil,
        pads_begin=pads[:d],
        pads_end=pads[d:],
        spatial=out_sp,
    )


def scalar_factor(graph: Graph, node: Node, x: str) -> float | None:
    """c when ``node`` computes ``c * x`` for a scalar constant c (Mul, Div with x first, Neg), else None."""
    if is_std(node, "Neg") and node.inputs[0] == x:
        return -1.0
    if not is_std(node, "Mul", "Div") or len(node.inputs) != 2 or x not in node.inputs:
        return None
    vi = node.inputs.index(x)
    other = node.inputs[1 - vi]
    if other == x:
        return None
    c = _const_f64(graph, other)
    if c is None or c.size != 1 or known_shape(graph, node.outputs[0]) != known_shape(graph, x):
        return None
    v = float(c.reshape(-1)[0])
    if node.op_type == "Mul":
        return v
    if vi != 0 or v == 0.0:
        return None
    return 1.0 / v  # only the caller's float use; exact coefficients come from exact_scalar


def exact_scalar(graph: Graph, node: Node, x: str):  # -> Fraction | None
    """The scalar factor of ``node`` as an exact Fraction (Div by c is exactly 1/c in real arithmetic)."""
    from fractions import Fraction

    f = scalar_factor(graph, node, x)
    if f is None:
        return None
    if is_std(node, "Neg"):
        return Fraction(-1)
    c = _const_f64(graph, node.inputs[1 - node.inputs.index(x)])
    assert c is not None
    v = Fraction(float(c.reshape(-1)[0]))
    return v if node.op_type == "Mul" else 1 / v


def is_bias_add(graph: Graph, node: Node, x: str) -> bool:
    """``x + b`` or ``x - b`` with a constant b that does not enlarge x (a shift: Jacobian I)."""
    if not is_std(node, "Add", "Sub") or len(node.inputs) != 2 or x not in node.inputs:
        return False
    vi = node.inputs.index(x)
    if node.op_type == "Sub" and vi != 0:
        return False
    other = node.inputs[1 - vi]
    return (
        other != x
        and not graph.is_variable(other)
        and const_value(graph, other) is not None
        and known_shape(graph, node.outputs[0]) == known_shape(graph, x)
    )
