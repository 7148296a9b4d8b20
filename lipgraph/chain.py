"""Recognise a network that is a plain chain of (affine map, slope-restricted activation) layers.

The per-pair network bounds (``lipgraph.norms.lipsdp``) need the model as
``logits = A phi(W_m ... phi(W_1 x + b_1) ... + b_m) + b`` with every activation elementwise and
slope-restricted in [0, 1]. This module walks the analysis graph forward from the input: each run
of linear ops (Gemm / MatMul / Conv with constant weights, Add / Sub / Mul / Div by constants, and
shape-only ops: the ops of ``lipgraph.tail``) is composed into one dense float64 matrix by pushing
the standard basis through it, with the composition's rounding bound ``gamma_n |W|`` entrywise
(Higham, sec. 3.5) as in the affine tail. Every intermediate tensor must feed exactly one node, so
no other path can reach the logits. Anything else (a residual Add of two variables, GroupSort,
pooling, a Conv with automatic padding) means "not a chain", with the reason, and the caller keeps the
other bounds: nothing is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from lipgraph.graph import Graph, Node
from lipgraph.graph_build import build_graph
from lipgraph.norms.lipsdp import ChainWeights
from lipgraph.tail import _LINEAR_OPS, EPS64, _NotAffine, dense_segment, segment_rho

MAX_INPUT_DIM = 4096  # the basis of the input is pushed through the first segment: d x d float64 arrays
MAX_HIDDEN_TOTAL = 4096  # the certificate matrix has the size of all hidden layers together
# Conv layers are expanded to dense matrices (lipgraph.norms.conv_apply): fine for the small feature maps the
# hidden-size limit admits (e.g. a digits CNN), refused above it before any matrix is built
_CHAIN_LINEAR_OPS = _LINEAR_OPS | {"Conv"}


def _slope_in_unit_interval(node: Node) -> bool:
    """Elementwise activations whose slope lies in [0, 1] everywhere (the LipSDP-neuron premise)."""
    if node.bound_only:
        return False  # a bound-only rewrite changed its values: its slope range is not the op's
    op, attrs = node.op_type, node.attrs
    if op in ("Relu", "Sigmoid", "Tanh", "Softplus"):  # slopes [0,1], (0,1/4], (0,1], (0,1)
        return True
    if op == "LeakyRelu":
        return 0.0 <= float(attrs.get("alpha", 0.01)) <= 1.0
    if op == "Elu":
        return 0.0 <= float(attrs.get("alpha", 1.0)) <= 1.0
    return False


@dataclass
class Chain:
    """The chain's weights (for :mod:`lipgraph.norms.lipsdp`) and a description for the report."""

    weights: ChainWeights
    activations: list[str]
    input_dim: int
    ops: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {
            "input_dim": self.input_dim,
            "hidden": self.weights.sizes,
            "classes": int(self.weights.last.shape[0]),
            "activations": self.activations,
        }


class NotAChain(Exception):
    """The model is not a chain of (affine, slope-restricted activation) layers; the message says why."""


def extract_chain(graph: Graph, logits: str) -> Chain:
    """The chain from ``graph.input_name`` to ``logits``, or :class:`NotAChain` with the reason."""
    cur = graph.input_name
    shape = graph.shape_of(cur)
    if shape is None or len(shape) < 1 or any(d is None for d in shape) or shape[0] != 1:
        raise NotAChain(f"the input '{cur}' has no fixed per-sample shape")
    segment: list[tuple[Node, int]] = []
    seg_shape: tuple[int, ...] = tuple(int(d) for d in shape)  # type: ignore[arg-type]
    matrices: list[tuple[np.ndarray, np.ndarray]] = []
    activations: list[str] = []
    ops: list[str] = []
    input_dim = int(np.prod(seg_shape[1:], dtype=np.int64))
    hidden_total = 0
    if input_dim > MAX_INPUT_DIM:
        raise NotAChain(f"input of {input_dim} values (limit {MAX_INPUT_DIM})")
    while cur != logits:
        users = graph.consumers(cur)
        if len(users) != 1:
            raise NotAChain(f"'{cur}' feeds {len(users)} nodes (a chain has exactly one)")
        node = users[0]
        if node.domain != "ai.onnx":
            raise NotAChain(f"{node.domain}:{node.op_type} '{node.name}' is not an affine op or an activation")
        var = [k for k, i in enumerate(node.inputs) if i and graph.is_variable(i)]
        if len(var) != 1 or node.inputs[var[0]] != cur or len(node.outputs) < 1:
            raise NotAChain(f"{node.op_type} '{node.name}' has several variable inputs")
        ops.append(f"{node.op_type}:{node.name}")
        if node.op_type in _CHAIN_LINEAR_OPS:
            segment.append((node, var[0]))
        elif _slope_in_unit_interval(node):
            if not segment:
                raise NotAChain(f"two activations in a row at '{node.name}'")
            out_shape = graph.shape_of(node.outputs[0]) or graph.shape_of(cur)
            if out_shape is None or any(d is None for d in out_shape):
                raise NotAChain(f"no fixed shape after '{node.name}'")
            hidden_total += int(np.prod(out_shape[1:], dtype=np.int64))
            if hidden_total > MAX_HIDDEN_TOTAL:  # before composing: a conv layer's matrix can be large
                raise NotAChain(f"{hidden_total} or more hidden units (limit {MAX_HIDDEN_TOTAL})")
            matrices.append(_compose(segment, seg_shape, graph))
            activations.append(node.op_type)
            seg_shape = tuple(int(d) for d in out_shape)  # type: ignore[arg-type]
            segment = []
        else:
            raise NotAChain(f"{node.op_type} '{node.name}' is not an affine op or a [0, 1]-slope activation")
        cur = node.outputs[0]
    if not activations:
        raise NotAChain("no activation: the model is affine (the tail bound is exact there)")
    if not segment:
        raise NotAChain("the logits are an activation's output")
    matrices.append(_compose(segment, seg_shape, graph))
    hidden = [m for m, _ in matrices[:-1]]
    if sum(w.shape[0] for w in hidden) > MAX_HIDDEN_TOTAL:
        raise NotAChain(f"{sum(w.shape[0] for w in hidden)} hidden units (limit {MAX_HIDDEN_TOTAL})")
    try:
        weights = ChainWeights(hidden, [e for _, e in matrices[:-1]], matrices[-1][0], matrices[-1][1])
    except ValueError as exc:
        raise NotAChain(str(exc)) from None
    return Chain(weights, activations, input_dim, ops)


def _compose(segment: list[tuple[Node, int]], shape: tuple[int, ...], graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """The segment's matrix (outputs x inputs) and its entrywise rounding bound."""
    d = int(np.prod(shape[1:], dtype=np.int64))
    try:
        w, wa, n_ops = dense_segment(graph, segment, shape, d)
    except _NotAffine as exc:
        raise NotAChain(f"a linear segment: {exc}") from None
    n = n_ops + d + 8
    gamma = 2.0 * n * EPS64 / (1.0 - 2.0 * n * EPS64)  # the affine tail's composition bound
    # plus the rounding of constants a pass computed in float64 (the L2-pooling scale), relative to |W|
    return w, (gamma + segment_rho(segment)) * wa * (1.0 + 4 * EPS64)


def unfused_graph(proto: onnx.ModelProto, input_name: str | None, sample_shape: tuple[int, ...] | None) -> Graph:
    """The model's graph after only the passes it needs to be bounded: the tightening passes fuse an MLP's
    hidden layers into sandwich nodes (and linear runs into one matrix), which would hide the chain."""
    from lipgraph.passes import default_passes, run_passes

    graph = build_graph(proto, input_name, sample_shape)
    run_passes(graph, default_passes(tightening=False))
    return graph
