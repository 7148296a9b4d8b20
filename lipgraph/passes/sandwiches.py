"""Recognise sandwich blocks ``P sigma(Q x + b)``, residual or not, and fuse each into one node.

Two published 1-Lipschitz families are built from them, and both are 1-Lipschitz for a reason a
per-op product cannot see:

* residual sandwiches ``y = x - P sigma(Q x + b)`` with ``P = Q^T S``, S a nonnegative diagonal:
  CPL (Meunier et al. 2022, ``S = 2 / ||W||^2``) and SLL (Araujo et al. 2023, ``S = 2 T^-1``),
  dense (Gemm/MatMul) or conv (a Conv, then the ConvTranspose of the same kernel);
* plain sandwiches ``y = M sigma(N x + b)``: the hidden layers of LBDN / Sandwich networks
  (Wang and Manchester 2023), with the diagonal Psi folded into M and N.

The pass only checks the structure, exactly: Q and P are a linear op each (constant weights; for
conv, a Conv and a ConvTranspose with the same kernel shape, group, strides, dilations and pads,
the ConvTranspose mapping back to the Conv's input size, so that it is the adjoint of the Conv
with its own kernel); sigma is elementwise, nondecreasing and 1-Lipschitz (slopes in [0, 1]);
between them only bias adds and scalings by constants (per hidden channel before P, scalars
after it); every intermediate tensor is read only inside the block; the residual adds the block's
own input x. The fused node stores Q, P and the scalings; its rule (lipgraph/rules/families.py)
decides how close P is to ``Q^T S`` and bounds the block (falling back to the per-op product when
the certificate does not apply). Anything else (an activation with a slope outside [0, 1], a
per-channel scale after P, a third reader) is left to the generic rules.

Runs after fold_scale (which may already have folded the scalings into Q or P: the rule then
finds S numerically, with a rigorous remainder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.norms.weight_rounding import compose
from lipgraph.passes.fold_scale import _per_channel
from lipgraph.passes.groupsort import const_value, fused_node, is_std, known_shape
from lipgraph.passes.linear_ops import LinearOp, is_bias_add, linear_op, scalar_factor


def slopes_in_unit_interval(graph: Graph, node: Node) -> bool:
    """True when ``node`` is an elementwise activation that is nondecreasing and 1-Lipschitz.

    Never for a bound-only node: its effective slope may carry the sign of a scale folded away."""
    if node.bound_only:
        return False
    if not is_std(node, "Relu", "LeakyRelu", "Tanh", "Sigmoid", "Softplus", "Softsign", "Clip", "Elu", "HardSigmoid"):
        return False
    if node.op_type in ("LeakyRelu", "Elu", "HardSigmoid"):
        default = {"LeakyRelu": 0.01, "Elu": 1.0, "HardSigmoid": 0.2}[node.op_type]
        alpha = float(node.attrs.get("alpha", default))
        return 0.0 <= alpha <= 1.0
    if node.op_type == "Clip":
        return all(not graph.is_variable(i) for i in node.inputs[1:] if i)
    return True


@dataclass
class Branch:
    """``c_post * P(c_pre * sigma(Q x + b))`` (biases dropped); ``nodes`` are all the ops in it."""

    q: LinearOp
    p: LinearOp
    act: Node
    c_pre: np.ndarray  # per hidden channel (size 1: a scalar)
    c_post: list[float] = field(default_factory=list)  # scalar factors after P
    c_pre_ops: int = 0  # float64 operations that formed c_pre (a product, and a reciprocal per Div)
    c_post_divs: int = 0  # reciprocals among c_post (a Div by c is stored as the rounded 1/c)
    nodes: list[Node] = field(default_factory=list)


def _single_reader(graph: Graph, tensor: str, node: Node) -> bool:
    readers = graph.consumers(tensor)
    return len(readers) == 1 and readers[0] is node and not graph.is_graph_output(tensor)


def _hidden_scale(graph: Graph, node: Node, t: str, hidden_axis: int) -> np.ndarray | None:
    """Per-hidden-channel factor of a Mul/Div by a constant (a scalar counts), else None."""
    if not is_std(node, "Mul", "Div") or len(node.inputs) != 2 or t not in node.inputs:
        return None
    vi = node.inputs.index(t)
    c = const_value(graph, node.inputs[1 - vi])
    ts = known_shape(graph, t)
    if c is None or ts is None or np.asarray(c).dtype.kind != "f" or known_shape(graph, node.outputs[0]) != ts:
        return None
    pc = _per_channel(np.asarray(c, dtype=np.float64), ts)
    if pc is None or (pc[1] is not None and pc[1] != hidden_axis % len(ts)):
        return None
    vec = pc[0]
    if not np.all(np.isfinite(vec)):
        return None
    if node.op_type == "Div":
        if vi != 0 or np.any(vec == 0):
            return None
        return 1.0 / vec
    return vec


def match_branch(graph: Graph, end: str, allow_post: bool) -> Branch | None:
    """Walk back from tensor ``end`` to ``sigma``'s input and Q; None unless the shape is exact."""
    nodes: list[Node] = []
    c_post: list[float] = []
    c_post_divs = 0
    t = end
    node = graph.producer(t)
    # after P: scalars and bias adds
    while allow_post and node is not None and not is_std(node, "Gemm", "MatMul", "ConvTranspose"):
        src = next((i for i in node.inputs if i and graph.is_variable(i)), None)
        if src is None or not _single_reader(graph, src, node):
            return None
        f = scalar_factor(graph, node, src)
        if f is None and not is_bias_add(graph, node, src):
            return None
        if f is not None:
            c_post.append(f)
            c_post_divs += node.op_type == "Div"
        nodes.append(node)
        t, node = src, graph.producer(src)
    if node is None:
        return None
    p = linear_op(graph, node)
    if p is None or p.kind == "conv":
        return None
    nodes.append(node)
    hidden_axis = -1 if p.kind == "dense" else 1
    c_pre = np.ones(1)
    c_pre_ops = 0
    t = p.x
    node = graph.producer(t)
    # between sigma and P: per-hidden-channel scalings and bias adds
    while node is not None and (node.op_type in ("Mul", "Div", "Add", "Sub")) and node.domain == "ai.onnx":
        if not _single_reader(graph, t, nodes[-1]):
            return None
        src = next((i for i in node.inputs if i and graph.is_variable(i)), None)
        if src is None:
            return None
        scale = _hidden_scale(graph, node, src, hidden_axis)
        if scale is None and not is_bias_add(graph, node, src):
            return None
        if scale is not None:
            c_pre = c_pre * scale if (c_pre.size == scale.size or c_pre.size == 1 or scale.size == 1) else None
            if c_pre is None:
                return None
            c_pre_ops += 2 if node.op_type == "Div" else 1
        nodes.append(node)
        t, node = src, graph.producer(src)
    if node is None or not slopes_in_unit_interval(graph, node) or not _single_reader(graph, t, nodes[-1]):
        return None
    act = node
    nodes.append(act)
    t = act.inputs[0]
    node = graph.producer(t)
    while node is not None and is_std(node, "Add", "Sub") and _single_reader(graph, t, nodes[-1]):
        src = next((i for i in node.inputs if i and graph.is_variable(i)), None)
        if src is None or not is_bias_add(graph, node, src):
            return None
        nodes.append(node)
        t, node = src, graph.producer(src)
    if node is None or not _single_reader(graph, t, nodes[-1]):
        return None
    q = linear_op(graph, node)
    if q is None or q.kind == "conv_transpose" or (q.kind == "dense") != (p.kind == "dense"):
        return None
    nodes.append(node)
    if not _compatible(q, p):
        return None
    return Branch(q, p, act, c_pre, c_post, nodes=nodes, c_pre_ops=c_pre_ops, c_post_divs=c_post_divs)


def _compatible(q: LinearOp, p: LinearOp) -> bool:
    """P reads Q's output space (dense: the hidden size; conv: the adjoint geometry, so P maps back)."""
    if q.kind == "dense":
        assert q.matrix is not None and p.matrix is not None
        return p.matrix.shape[1] == q.matrix.shape[0]
    assert q.kernel is not None and p.kernel is not None
    return q.kernel.shape == p.kernel.shape and q.geometry() == p.geometry()


def _attrs(br: Branch) -> dict:
    base = {
        "kind": br.q.kind,
        "c_pre": br.c_pre,
        "c_pre_ops": br.c_pre_ops,
        "c_post": list(br.c_post),
        "c_post_divs": br.c_post_divs,
        "activation": br.act.op_type,
        # Weights a pass computed in float64 (folded scales; Node.rho): the rule adds their rounding. The
        # scaling nodes between sigma and the residual belong to P's side.
        "rho_q": br.q.node.rho,
        "rho_p": compose(*(n.rho for n in br.nodes if n is not br.q.node)),
    }
    if br.q.kind == "dense":
        base.update(q=br.q.matrix, p=br.p.matrix)
    else:
        base.update(
            q=br.q.kernel,
            p=br.p.kernel,
            group=br.q.group,
            strides=br.q.strides,
            dilations=br.q.dilations,
            pads_begin=br.q.pads_begin,
            pads_end=br.q.pads_end,
            spatial=br.q.spatial,
        )
    return base


def recognise_residual_sandwiches(graph: Graph) -> None:
    """Fuse ``x -/+ c P(sigma(Q x + b))`` (CPL, SLL, dense or conv) into ``ResidualSandwich`` nodes."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if not is_std(node, "Sub", "Add") or len(node.inputs) != 2:
                continue
            if not all(graph.is_variable(i) for i in node.inputs) or node.inputs[0] == node.inputs[1]:
                continue
            for ri in (1, 0) if node.op_type == "Add" else (1,):
                r, x = node.inputs[ri], node.inputs[1 - ri]
                if not _single_reader(graph, r, node):
                    continue
                br = match_branch(graph, r, allow_post=True)
                xs = known_shape(graph, x)
                if (
                    br is None
                    or br.q.x != x
                    or xs is None
                    or not (known_shape(graph, node.outputs[0]) == xs == known_shape(graph, r))
                ):
                    continue  # P must map back onto x itself (no broadcasting in the residual add)
                attrs = _attrs(br)
                attrs["sign"] = -1.0 if node.op_type == "Sub" else 1.0  # y = x + sign * branch
                parts = [*br.nodes, node]
                graph.replace(parts, [fused_node(graph, "ResidualSandwich", x, node.outputs[0], parts, attrs)])
                changed = True
                break
            if changed:
                break


def _reaches_logits_linearly(graph: Graph, tensor: str) -> bool:
    """True when ``tensor`` is the graph output or reaches it through shape ops, constant shifts and
    scalings only (no other matrix): then the op writing it is the tail's last linear op."""
    from lipgraph.tail import _LINEAR_OPS

    for _ in range(10_000):
        if graph.is_graph_output(tensor):
            return True
        readers = graph.consumers(tensor)
        if len(readers) != 1 or readers[0].domain != "ai.onnx" or readers[0].op_type not in _LINEAR_OPS:
            return False
        reader = readers[0]
        if reader.op_type in ("Gemm", "MatMul") or sum(graph.is_variable(i) for i in reader.inputs if i) != 1:
            return False  # a later matrix is the tail's (or the chain is not affine in one tensor)
        tensor = reader.outputs[0]
    return False


def recognise_sandwiches(graph: Graph) -> None:
    """Fuse dense ``M sigma(N x + b)`` (LBDN / Sandwich hidden layers) into ``Sandwich`` nodes.

    Not when M feeds the logits through linear ops only: the certify tail reads the last linear
    op itself (its pairwise rows give better radii than a fused block would).
    """
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if not is_std(node, "Gemm", "MatMul") or _reaches_logits_linearly(graph, node.outputs[0]):
                continue
            br = match_branch(graph, node.outputs[0], allow_post=False)
            if br is None or br.q.kind != "dense":
                continue
            attrs = _attrs(br)
            graph.replace(br.nodes, [fused_node(graph, "Sandwich", br.q.x, node.outputs[0], br.nodes, attrs)])
            changed = True
            break
