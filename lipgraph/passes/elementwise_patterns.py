"""Recognise more of torch's activations written as primitive ops (torch 2.13, both exporters).

Op by op these are refused (a division by the input, ``Log``, ``Pow(x, 3)``, comparisons feeding
``Where``), although each whole activation is globally Lipschitz. Each pattern below is matched with
its constants checked exactly and every intermediate tensor read only inside the pattern; anything
else is left alone, so the generic rules refuse it (or bound it soundly), never with the pattern's value.

* Softsign ``x / (1 + |x|)``: ``Abs(x) -> Add(., 1) -> Div(x, .)`` (both exporters)
  -> ``Softsign`` (sup |f'| = 1 at 0).
* LogSigmoid ``log(sigmoid(x))``: ``Sigmoid(x) -> Log`` (both exporters) -> ``Neg(Softplus(Neg(x)))``,
  the same function (``log sigmoid(x) = -softplus(-x)``); its slope ``1 - sigmoid(x)`` is below 1.
* Softshrink(l), ``x - l`` above l, ``x + l`` below -l, 0 between (continuous for l >= 0):
  legacy ``Where(x > l, x - l, 0) + Where(x < -l, x + l, 0)``; dynamo
  ``Where(|x| > l, x - sign(x) * l, x * 0)`` -> ``Shrink(lambd = bias = l)`` (slope 0 or 1).
* Softplus with torch's threshold (dynamo): ``Where(b x > t, x, Softplus(b x) / b)`` -> a
  ``lipgraph:SoftplusThreshold`` node whose rule refuses with the size of the jump at ``x = t / b``
  (the branches differ there by ``log1p(exp(-t)) / b``, about 2e-9 for t = 20): not continuous, so no
  Lipschitz constant holds; the node only makes the error say why and what to do.
* GELU, tanh form ``a x (1 + tanh(k (x + c x^3)))``, with torch's float32 constants ``c = 0.044715``
  and ``k = sqrt(2/pi)`` (cube as ``Pow(x, 3)`` or ``Mul(x, Mul(x, x))``, the factor a on either side)
  -> ``lipgraph:Gelu`` with ``scale = 2a`` and ``approximate = "tanh"`` (sup |f'| = 1.128993... for
  a = 1/2, below the erf form's 1.128904 rounded up, 1.1290, which the Gelu rule uses for both).
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import const_value, fused_node, is_std

# torch's GELU(approximate="tanh") constants, as float32 (what both exporters write) and as float64.
GELU_TANH_CUBIC = (float(np.float32(0.044715)), 0.044715)
GELU_TANH_INNER = (float(np.float32(math.sqrt(2.0 / math.pi))), math.sqrt(2.0 / math.pi))


def scalar(graph: Graph, name: str) -> float | None:
    """The value of a constant with exactly one element (a scalar never broadcasts x up)."""
    v = const_value(graph, name)
    if v is None:
        return None
    arr = np.asarray(v)
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(-1)[0])


def other_input(node: Node, name: str) -> str | None:
    """The other input of a two-input node that reads ``name`` exactly once."""
    if len(node.inputs) != 2 or node.inputs.count(name) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def private(graph: Graph, parts: list[Node], final: Node) -> bool:
    """Every output of every part except ``final`` is read only by parts (and is no graph output)."""
    inside = {id(p) for p in parts}
    for p in parts:
        if p is final:
            continue
        for o in p.outputs:
            if not o:
                continue
            if graph.is_graph_output(o) or any(id(r) not in inside for r in graph.consumers(o)):
                return False
    return True


def _producer_if(graph: Graph, tensor: str, *ops: str) -> Node | None:
    p = graph.producer(tensor)
    return p if is_std(p, *ops) else None


# ----------------------------------------------------------------------------------- Softsign
def _match_softsign(graph: Graph, div: Node) -> tuple[str, list[Node]] | None:
    if len(div.inputs) != 2 or not graph.is_variable(div.inputs[0]):
        return None
    x, den = div.inputs
    add = _producer_if(graph, den, "Add")
    if add is None:
        return None
    for j in (0, 1):
        ab = _producer_if(graph, add.inputs[j], "Abs")
        if ab is None or ab.inputs[0] != x or len(add.inputs) != 2:
            continue
        if scalar(graph, add.inputs[1 - j]) != 1.0:
            return None
        parts = [ab, add, div]
        return (x, parts) if private(graph, parts, div) else None
    return None


# --------------------------------------------------------------------------------- LogSigmoid
def _match_log_sigmoid(graph: Graph, log: Node) -> tuple[str, list[Node]] | None:
    sig = _producer_if(graph, log.inputs[0], "Sigmoid")
    if sig is None or not graph.is_variable(sig.inputs[0]):
        return None
    parts = [sig, log]
    return (sig.inputs[0], parts) if private(graph, parts, log) else None


# --------------------------------------------------------------------------------- Softshrink
def _legacy_branch(graph: Graph, where: Node, cmp_op: str, arith_op: str) -> tuple[str, float, list[Node]] | None:
    """``Where(Cmp(x, t), Arith(x, c), 0)``: (x, t, nodes) when ``c`` matches the threshold."""
    if len(where.inputs) != 3 or scalar(graph, where.inputs[2]) != 0.0:
        return None
    cmp_ = _producer_if(graph, where.inputs[0], cmp_op)
    ar = _producer_if(graph, where.inputs[1], arith_op)
    if cmp_ is None or ar is None or len(cmp_.inputs) != 2 or len(ar.inputs) != 2:
        return None
    x = cmp_.inputs[0]
    t, c = scalar(graph, cmp_.inputs[1]), scalar(graph, ar.inputs[1])
    if t is None or c is None or ar.inputs[0] != x or not graph.is_variable(x):
        return None
    # x > l -> x - l (Sub, c = l); x < -l -> x + l (Add, c = l = -t).
    lam = t if cmp_op == "Greater" else -t
    if c != lam:
        return None
    return x, lam, [cmp_, ar, where]


def _match_softshrink_legacy(graph: Graph, add: Node) -> tuple[str, float, list[Node]] | None:
    if len(add.inputs) != 2:
        return None
    wheres = [_producer_if(graph, i, "Where") for i in add.inputs]
    if any(w is None for w in wheres) or wheres[0] is wheres[1]:
        return None
    for hi_w, lo_w in ((wheres[0], wheres[1]), (wheres[1], wheres[0])):
        assert hi_w is not None and lo_w is not None
        hi = _legacy_branch(graph, hi_w, "Greater", "Sub")
        lo = _legacy_branch(graph, lo_w, "Less", "Add")
        if hi is None or lo is None or hi[0] != lo[0] or hi[1] != lo[1]:
            continue
        parts = [*hi[2], *lo[2], add]
        return (hi[0], hi[1], parts) if private(graph, parts, add) else None
    return None


def _match_softshrink_dynamo(graph: Graph, where: Node) -> tuple[str, float, list[Node]] | None:
    if len(where.inputs) != 3:
        return None
    gt = _producer_if(graph, where.inputs[0], "Greater")
    sub = _producer_if(graph, where.inputs[1], "Sub")
    zero = _producer_if(graph, where.inputs[2], "Mul")
    if gt is None or sub is None or zero is None or len(gt.inputs) != 2 or len(sub.inputs) != 2:
        return None
    ab = _producer_if(graph, gt.inputs[0], "Abs")
    lam = scalar(graph, gt.inputs[1])
    if ab is None or lam is None:
        return None
    x = ab.inputs[0]
    if sub.inputs[0] != x or not graph.is_variable(x):
        return None
    mul = _producer_if(graph, sub.inputs[1], "Mul")
    if mul is None:
        return None
    sign_in = [i for i in mul.inputs if _producer_if(graph, i, "Sign") is not None]
    if len(sign_in) != 1 or other_input(mul, sign_in[0]) is None:
        return None
    sign = graph.producer(sign_in[0])
    assert sign is not None
    if sign.inputs[0] != x or scalar(graph, other_input(mul, sign_in[0]) or "") != lam:
        return None
    if other_input(zero, x) is None or scalar(graph, other_input(zero, x) or "") != 0.0:
        return None
    parts = [ab, gt, sign, mul, sub, zero, where]
    return (x, lam, parts) if private(graph, parts, where) else None


# ----------------------------------------------------------------------------------- GELU tanh
def _cube_of(graph: Graph, tensor: str) -> tuple[str, list[Node]] | None:
    """``Pow(x, 3)`` or ``Mul(x, Mul(x, x))`` (either order): (x, nodes)."""
    p = graph.producer(tensor)
    if is_std(p, "Pow") and p is not None and len(p.inputs) == 2 and scalar(graph, p.inputs[1]) == 3.0:
        return p.inputs[0], [p]
    if not is_std(p, "Mul") or p is None or len(p.inputs) != 2:
        return None
    for j in (0, 1):
        sq = _producer_if(graph, p.inputs[j], "Mul")
        x = p.inputs[1 - j]
        if sq is not None and sq.inputs == [x, x]:
            return x, [sq, p]
    return None


def _scaled(graph: Graph, node: Node | None, allowed: tuple[float, ...]) -> str | None:
    """For ``Mul(c, v)`` (either order) with scalar c in ``allowed``: the other input v."""
    if not is_std(node, "Mul") or node is None or len(node.inputs) != 2:
        return None
    for j in (0, 1):
        c = scalar(graph, node.inputs[j])
        if c is not None and c in allowed and not graph.is_variable(node.inputs[j]):
            return node.inputs[1 - j]
    return None


def _times_x(graph: Graph, gate: str, x: str) -> tuple[Node, list[Node], float] | None:
    """``a * x * gate`` in torch's three orders: (final node, nodes, a)."""
    readers = [] if graph.is_graph_output(gate) else graph.consumers(gate)
    if len(readers) != 1 or not is_std(readers[0], "Mul"):
        return None
    m1 = readers[0]
    partner = other_input(m1, gate)
    if partner is None:
        return None
    if partner == x:  # Mul(x, gate) -> Mul(., a)
        nxt = [] if graph.is_graph_output(m1.outputs[0]) else graph.consumers(m1.outputs[0])
        if len(nxt) == 1 and is_std(nxt[0], "Mul"):
            a_name = other_input(nxt[0], m1.outputs[0])
            a = scalar(graph, a_name) if a_name is not None else None
            if a is not None:
                return nxt[0], [m1, nxt[0]], a
        return None
    a = scalar(graph, partner)
    if a is not None:  # Mul(a, gate) -> Mul(x, .)
        nxt = [] if graph.is_graph_output(m1.outputs[0]) else graph.consumers(m1.outputs[0])
        if len(nxt) == 1 and is_std(nxt[0], "Mul") and other_input(nxt[0], m1.outputs[0]) == x:
            return nxt[0], [m1, nxt[0]], a
        return None
    half = _producer_if(graph, partner, "Mul")  # Mul(x, a) -> Mul(., gate)
    if half is None:
        return None
    a_name = other_input(half, x)
    a = scalar(graph, a_name) if a_name is not None else None
    return (m1, [half, m1], a) if a is not None else None


def _match_gelu_tanh(graph: Graph, tanh: Node) -> tuple[str, Node, list[Node], float] | None:
    inner = _scaled(graph, graph.producer(tanh.inputs[0]), GELU_TANH_INNER)
    pre = graph.producer(tanh.inputs[0])
    if inner is None or pre is None:
        return None
    add = _producer_if(graph, inner, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    for j in (0, 1):
        x, cubic = add.inputs[j], add.inputs[1 - j]
        if not graph.is_variable(x):
            continue
        m_c = graph.producer(cubic)
        cube = _scaled(graph, m_c, GELU_TANH_CUBIC)
        if cube is None or m_c is None:
            continue
        c3 = _cube_of(graph, cube)
        if c3 is None or c3[0] != x:
            continue
        readers = [] if graph.is_graph_output(tanh.outputs[0]) else graph.consumers(tanh.outputs[0])
        if len(readers) != 1 or not is_std(readers[0], "Add"):
            return None
        one = readers[0]
        one_name = other_input(one, tanh.outputs[0])
        if one_name is None or scalar(graph, one_name) != 1.0:
            return None
        tail = _times_x(graph, one.outputs[0], x)
        if tail is None:
            return None
        final, tail_nodes, a = tail
        parts = [*c3[1], m_c, add, pre, tanh, one, *tail_nodes]
        if not math.isfinite(a) or not private(graph, parts, final):
            return None
        return x, final, parts, a
    return None


# ----------------------------------------------------------------------------- Softplus threshold
def _match_softplus_threshold(graph: Graph, where: Node) -> tuple[str, list[Node], dict] | None:
    if len(where.inputs) != 3:
        return None
    gt = _producer_if(graph, where.inputs[0], "Greater")
    if gt is None or len(gt.inputs) != 2:
        return None
    scaled, x = gt.inputs[0], where.inputs[1]
    t = scalar(graph, gt.inputs[1])
    if t is None or not graph.is_variable(x):
        return None
    parts = [gt]
    beta = 1.0
    if scaled != x:
        mul = _producer_if(graph, scaled, "Mul")
        b_name = other_input(mul, x) if mul is not None else None
        b = scalar(graph, b_name) if b_name is not None else None
        if mul is None or b is None:
            return None
        beta = b
        parts.append(mul)
    soft = where.inputs[2]
    div = _producer_if(graph, soft, "Div")
    if div is not None:
        if scalar(graph, div.inputs[1]) != beta:
            return None
        parts.append(div)
        soft = div.inputs[0]
    sp = _producer_if(graph, soft, "Softplus")
    if sp is None or sp.inputs[0] != scaled or (beta != 1.0 and div is None):
        return None
    parts += [sp, where]
    return x, parts, {"beta": beta, "threshold": t}


# ------------------------------------------------------------------------------------- the pass
def _new(graph: Graph, op: str, inputs: list[str], output: str, parts: list[Node], **attrs: object) -> Node:
    origin = [o for p in parts for o in (p.origin or [p.name])]
    return Node(
        graph.fresh_name(op),
        op,
        "ai.onnx",
        inputs,
        [output],
        dict(attrs),
        graph.opsets.get("ai.onnx", 17),
        origin=origin,
    )


def _rewrite_one(graph: Graph, node: Node) -> bool:
    if is_std(node, "Div"):
        m = _match_softsign(graph, node)
        if m is not None:
            graph.replace(m[1], [_new(graph, "Softsign", [m[0]], node.outputs[0], m[1])])
            return True
    if is_std(node, "Log"):
        m = _match_log_sigmoid(graph, node)
        if m is not None:
            x, parts = m
            neg_x, sp = graph.fresh_name("logsigmoid_neg"), graph.fresh_name("logsigmoid_softplus")
            for t in (neg_x, sp):
                graph.tensor(t).variable = True
                graph.tensor(t).shape = graph.shape_of(x)
                graph.tensor(t).elem_type = graph.tensor(x).elem_type
            new = [
                _new(graph, "Neg", [x], neg_x, parts),
                _new(graph, "Softplus", [neg_x], sp, parts),
                _new(graph, "Neg", [sp], node.outputs[0], parts),
            ]
            graph.replace(parts, new)
            return True
    shrink = None
    if is_std(node, "Add"):
        shrink = _match_softshrink_legacy(graph, node)
    elif is_std(node, "Where"):
        shrink = _match_softshrink_dynamo(graph, node)
        sp = _match_softplus_threshold(graph, node) if shrink is None else None
        if sp is not None and private(graph, sp[1], node):
            graph.replace(sp[1], [fused_node(graph, "SoftplusThreshold", sp[0], node.outputs[0], sp[1], sp[2])])
            return True
    if shrink is not None:
        x, lam, parts = shrink
        if lam >= 0.0 and math.isfinite(lam):  # l < 0 overlaps the two branches (slope 2): not Softshrink
            graph.replace(parts, [_new(graph, "Shrink", [x], node.outputs[0], parts, lambd=lam, bias=lam)])
            return True
    if is_std(node, "Tanh"):
        g = _match_gelu_tanh(graph, node)
        if g is not None:
            x, final, parts, a = g
            attrs = {"scale": 2.0 * a, "approximate": "tanh"}
            graph.replace(parts, [fused_node(graph, "Gelu", x, final.outputs[0], parts, attrs)])
            return True
    return False


def recognise_more_activations(graph: Graph) -> None:
    """Rewrite Softsign, LogSigmoid, Softshrink and tanh-form GELU patterns (see the module docstring)."""
    changed = True
    while changed:
        changed = False
        for node in list(graph.nodes):
            if _rewrite_one(graph, node):
                changed = True
                break
