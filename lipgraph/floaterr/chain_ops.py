"""Reading a chain of (affine op, elementwise activation) layers for the per-sample float error bound.

``read_chain_ops`` walks the graph from its input to the logits and turns each node into a :class:`ChainOp`:
the batched float64 maps ``x -> W x`` and ``x -> |W| x``, the bias, a Schur-test bound of ``|| |W| ||_2`` and
the rounding counts of the graph walk (``lipgraph.floaterr.local``). Anything that is not such a chain raises
:class:`NotAChainForFloat` with the reason; the arithmetic on these ops lives in ``lipgraph.floaterr.chain_sample``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from lipgraph.floaterr.state import ZERO, NoFloatBound, State, schur
from lipgraph.graph import Graph, Node
from lipgraph.norms.conv_apply import ConvNotSupported, conv2d_linear

SHAPE_OPS = {"Flatten", "Reshape", "Identity", "Dropout", "Squeeze", "Unsqueeze"}


class NotAChainForFloat(Exception):
    """The model is not a chain this module handles; the message says why (the walk's bound stays)."""


@dataclass
class ChainOp:
    """One node of the chain. ``kind``: "dot", "add", "relu", "leaky", "shape"."""

    kind: str
    name: str
    out_shape: tuple[int, ...]  # per sample
    factor: float = 1.0  # the real node's Lipschitz factor (the bound rule's, rounding included)
    lin: Callable[[np.ndarray], np.ndarray] | None = None  # x -> W x (batched, float64)
    abs_lin: Callable[[np.ndarray], np.ndarray] | None = None  # x -> |W| x
    bias: np.ndarray | None = None  # |b| for terms, b for the value (broadcastable per sample)
    abs_norm: float = 0.0  # upper bound of || |W| ||_2 (Schur test)
    n: int = 0  # roundings counted in the accumulator (as the walk counts them)
    inner: int = 0  # the products among them (each output's dot-product length)
    alpha: float = 0.0  # LeakyRelu slope
    consts: tuple[np.ndarray, ...] = ()  # the constants it reads (weights, biases, added constants)


def read_chain_ops(graph: Graph, logits: str) -> list[ChainOp]:
    from lipgraph.floaterr.walk import _factors

    cur = graph.input_name
    shape = graph.shape_of(cur)
    if shape is None or any(d is None for d in shape) or shape[0] != 1:
        raise NotAChainForFloat(f"the input '{cur}' has no fixed per-sample shape")
    ops: list[ChainOp] = []
    while cur != logits:
        users = graph.consumers(cur)
        if len(users) != 1:
            raise NotAChainForFloat(f"'{cur}' feeds {len(users)} nodes")
        node = users[0]
        var = [k for k, i in enumerate(node.inputs) if i and graph.is_variable(i)]
        if node.domain != "ai.onnx" or var != [0] or len(node.outputs) != 1:
            raise NotAChainForFloat(f"{node.op_type} '{node.name}' is not an op of a chain")
        out = node.outputs[0]
        t = graph.tensors.get(out)
        if t is None or t.elem_type != onnx.TensorProto.FLOAT:
            raise NotAChainForFloat(f"'{out}' is not a float32 tensor")
        out_shape = graph.shape_of(out)
        if out_shape is None or any(d is None for d in out_shape):
            raise NotAChainForFloat(f"no fixed shape for '{out}'")
        per = tuple(int(d) for d in out_shape[1:])  # type: ignore[arg-type]
        try:
            factor = _factors(graph, node, [State(ZERO, ZERO, ZERO, 0)] + [None] * (len(node.inputs) - 1))[0][0]
        except NoFloatBound as exc:
            raise NotAChainForFloat(str(exc)) from None
        try:
            ops.append(_node_op(graph, node, per, factor))
        except ValueError as exc:  # a constant that does not broadcast to the output, an odd Conv
            raise NotAChainForFloat(f"{node.op_type} '{node.name}': {exc}") from None
        cur = out
    if not any(op.kind == "dot" for op in ops):
        raise NotAChainForFloat("no affine op")
    return ops


def _const(graph: Graph, node: Node, i: int) -> np.ndarray | None:
    if i >= len(node.inputs) or not node.inputs[i]:
        return None
    t = graph.tensors.get(node.inputs[i])
    if t is None or t.variable or t.value is None:
        raise NotAChainForFloat(f"{node.op_type} '{node.name}' has a non-constant operand")
    return np.asarray(t.value, dtype=np.float64)


def _node_op(graph: Graph, node: Node, per: tuple[int, ...], factor: float) -> ChainOp:
    op, attrs = node.op_type, node.attrs
    if op in SHAPE_OPS:
        return ChainOp("shape", node.name, per)
    if op == "Relu":
        return ChainOp("relu", node.name, per)
    if op == "LeakyRelu":
        alpha = float(attrs.get("alpha", 0.01))
        if not 0.0 <= alpha <= 1.0:
            raise NotAChainForFloat(f"LeakyRelu '{node.name}' with alpha {alpha} outside [0, 1]")
        return ChainOp("leaky", node.name, per, alpha=alpha)
    if op in ("Add", "Sub"):
        c = _const(graph, node, 1)
        assert c is not None
        b = np.broadcast_to(c if op == "Add" else -c, (1, *per)) if c.ndim <= len(per) + 1 else None
        if b is None or b.shape != (1, *per):
            raise NotAChainForFloat(f"{op} '{node.name}': the constant does not broadcast to the output")
        return ChainOp("add", node.name, per, bias=np.array(b), consts=(c,))
    if op == "Gemm":
        return _gemm(graph, node, per, factor)
    if op == "MatMul":
        w = _const(graph, node, 1)
        if w is None or w.ndim != 2:
            raise NotAChainForFloat(f"MatMul '{node.name}' without a constant 2-D weight")
        return _dense_op(node.name, per, factor, w, None, int(w.shape[0]))
    if op == "Conv":
        return _conv(graph, node, per, factor)
    raise NotAChainForFloat(f"{op} '{node.name}' has no per-sample float model here")


def _gemm(graph: Graph, node: Node, per: tuple[int, ...], factor: float) -> ChainOp:
    attrs = node.attrs
    if int(attrs.get("transA", 0)):
        raise NotAChainForFloat(f"Gemm '{node.name}' with transA")
    w = _const(graph, node, 1)
    if w is None or w.ndim != 2:
        raise NotAChainForFloat(f"Gemm '{node.name}' without a constant matrix")
    if int(attrs.get("transB", 0)):
        w = w.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0 or beta != 1.0:  # a scaled Gemm would add float64 roundings to the reference values
        raise NotAChainForFloat(f"Gemm '{node.name}' with alpha {alpha}, beta {beta}")
    c = _const(graph, node, 2)
    bias = None if c is None else np.array(np.broadcast_to(c, (1, *per)))
    return _dense_op(node.name, per, factor, w, bias, int(w.shape[0]) + (1 if c is not None else 0) + 2)


def _dense_op(
    name: str, per: tuple[int, ...], factor: float, w: np.ndarray, bias: np.ndarray | None, roundings: int
) -> ChainOp:
    """``x @ w (+ bias)`` with ``roundings`` float operations per output (the walk's count for the op)."""
    aw = np.abs(w)
    return ChainOp(
        "dot",
        name,
        per,
        factor,
        lambda x, w=w: x @ w,
        lambda x, aw=aw: x @ aw,
        bias,
        schur(aw, aw.sum(axis=1), aw.sum(axis=0)),
        roundings,
        int(w.shape[0]),
        consts=(w,) if bias is None else (w, bias),
    )


def _conv(graph: Graph, node: Node, per: tuple[int, ...], factor: float) -> ChainOp:
    w = _const(graph, node, 1)
    if w is None or w.ndim != 4:
        raise NotAChainForFloat(f"Conv '{node.name}' is not a 2-D Conv with a constant kernel")
    b = _const(graph, node, 2)
    attrs = dict(node.attrs)
    aw = np.abs(w)

    def lin(x: np.ndarray, k: np.ndarray = w) -> np.ndarray:
        return conv2d_linear(x, k, attrs)[0]

    def abs_lin(x: np.ndarray, k: np.ndarray = aw) -> np.ndarray:
        return conv2d_linear(x, k, attrs)[0]

    try:
        lin(np.zeros((1, *[int(d) for d in graph.shape_of(node.inputs[0])[1:]])))  # type: ignore[index, union-attr]
    except (ConvNotSupported, TypeError) as exc:
        raise NotAChainForFloat(f"Conv '{node.name}': {exc}") from None
    g = int(attrs.get("group", 1))
    spatial = (2, 3)
    rows = aw.sum(axis=(1, *spatial))
    per_g = aw.shape[0] // g
    cols = np.concatenate([aw[j * per_g : (j + 1) * per_g].sum(axis=(0, *spatial)) for j in range(g)])
    bias = None if b is None else np.array(np.broadcast_to(b.reshape(1, -1, 1, 1), (1, *per)))
    n = int(np.prod(w.shape[1:])) + (1 if b is not None else 0)
    return ChainOp(
        "dot",
        node.name,
        per,
        factor,
        lin,
        abs_lin,
        bias,
        schur(aw, rows, cols),
        n,
        int(np.prod(w.shape[1:])),
        consts=(w,) if b is None else (w, b),
    )
