"""Recognise smooth activations that torch exports as primitive ops (a product of two variable tensors).

``x * s(x)`` is not bounded by the generic rules (a product of two variable tensors is refused), but
the whole activation is globally Lipschitz. Seen with torch 2.13 (both exporters, opsets 17/18):

* SiLU: ``Sigmoid(x) -> Mul(x, .)``  -> ``lipgraph:Silu``  (sup |f'| = 1.0998..., docs/operators.md);
* GELU, erf form: ``Div(x, c) -> Erf -> Add(., 1) -> Mul(x, .) -> Mul(., a)`` (c = sqrt 2, a = 1/2;
  legacy exporter), ``... Add(., 1) -> Mul(a, .) -> Mul(x, .)`` (dynamo exporter), ``Mul(x, 1/c)``
  and ``Mul(x, a) -> Mul(., 1 + erf)`` accepted too) -> ``lipgraph:Gelu`` with ``scale = 2 a``:
  ``f'(x) = a (1 + erf(u) + 2 u exp(-u^2) / sqrt(pi))`` with ``u = x / c`` does not depend on c, so
  ``sup |f'| = 2|a| * 1.1289...`` for any c > 0;
* Mish (legacy exporter): ``Softplus(x) -> Tanh -> Mul(x, .)`` -> ``lipgraph:Mish``.

The tanh form of GELU (a ``Pow(x, 3)`` chain) is not recognised: it stays refused.
Every intermediate tensor must be read only inside the pattern.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import const_value, fused_node, is_std, only_consumer


def _scalar(graph: Graph, name: str) -> float | None:
    v = const_value(graph, name)
    if v is None:
        return None
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    return float(arr[0]) if arr.size == 1 else None


def _mul_partner(node: Node, name: str) -> str | None:
    """The other input of a two-input Mul that reads ``name`` once."""
    if len(node.inputs) != 2 or node.inputs.count(name) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def _single_reader(graph: Graph, tensor: str) -> Node | None:
    if graph.is_graph_output(tensor):
        return None
    readers = graph.consumers(tensor)
    return readers[0] if len(readers) == 1 else None


def _match_silu_or_mish(graph: Graph, mul: Node) -> tuple[str, list[Node], str] | None:
    if len(mul.inputs) != 2 or not all(graph.is_variable(i) for i in mul.inputs):
        return None
    for j in (0, 1):
        x, gate = mul.inputs[1 - j], mul.inputs[j]
        p = graph.producer(gate)
        if p is None or not only_consumer(graph, gate, mul):
            continue
        if is_std(p, "Sigmoid") and p.inputs[0] == x:
            return x, [p, mul], "Silu"
        if is_std(p, "Tanh"):
            sp = graph.producer(p.inputs[0])
            if is_std(sp, "Softplus") and sp is not None and sp.inputs[0] == x and only_consumer(
                graph, p.inputs[0], p
            ):
                return x, [sp, p, mul], "Mish"
    return None


def _match_gelu(graph: Graph, erf: Node) -> tuple[str, str, list[Node], float] | None:
    pre = graph.producer(erf.inputs[0])
    if pre is None or not only_consumer(graph, erf.inputs[0], erf) or len(pre.inputs) != 2:
        return None
    if is_std(pre, "Div") and graph.is_variable(pre.inputs[0]):
        x, c = pre.inputs[0], _scalar(graph, pre.inputs[1])
        if c is None or not c > 0:
            return None
    elif is_std(pre, "Mul"):
        var = [i for i in pre.inputs if graph.is_variable(i)]
        if len(var) != 1:
            return None
        x = var[0]
        inv = _scalar(graph, pre.inputs[1] if pre.inputs[0] == x else pre.inputs[0])
        if inv is None or not inv > 0:
            return None
    else:
        return None
    add = _single_reader(graph, erf.outputs[0])
    if not is_std(add, "Add") or add is None:
        return None
    one = _mul_partner(add, erf.outputs[0])
    if one is None or _scalar(graph, one) != 1.0:
        return None
    m1 = _single_reader(graph, add.outputs[0])
    if not is_std(m1, "Mul") or m1 is None:
        return None
    partner = _mul_partner(m1, add.outputs[0])
    parts = [pre, erf, add, m1]
    if partner is None:
        return None
    if partner != x:
        a_const = _scalar(graph, partner)
        if a_const is not None:
            # 0.5 applied to (1 + erf) first (dynamo exporter): Mul(a, p) -> Mul(x, .).
            m2 = _single_reader(graph, m1.outputs[0])
            if not is_std(m2, "Mul") or m2 is None or _mul_partner(m2, m1.outputs[0]) != x:
                return None
            return x, m2.outputs[0], [*parts, m2], a_const
        # The 1/2 may come first on x: Mul(x, 0.5) -> Mul(., 1 + erf).
        half = graph.producer(partner)
        if not is_std(half, "Mul") or half is None or not only_consumer(graph, partner, m1):
            return None
        other = _mul_partner(half, x)
        a_val = _scalar(graph, other) if other is not None else None
        if a_val is None:
            return None
        parts.insert(0, half)
        return x, m1.outputs[0], parts, a_val
    out = m1.outputs[0]
    m2 = _single_reader(graph, out)
    if is_std(m2, "Mul") and m2 is not None:
        other = _mul_partner(m2, out)
        a_val = _scalar(graph, other) if other is not None else None
        if a_val is not None:
            parts.append(m2)
            return x, m2.outputs[0], parts, a_val
    return x, out, parts, 1.0


def recognise_activations(graph: Graph) -> None:
    """Fuse SiLU, erf-form GELU and Mish written as primitive ops into one ``lipgraph`` node each."""
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if is_std(node, "Erf"):
                m = _match_gelu(graph, node)
                if m is not None:
                    x, y, parts, a = m
                    if not math.isfinite(a):
                        continue
                    new = fused_node(graph, "Gelu", x, y, parts, {"scale": 2.0 * a})
                    graph.replace(parts, [new])
                    changed = True
                    break
            if is_std(node, "Mul"):
                m2 = _match_silu_or_mish(graph, node)
                if m2 is not None:
                    x, parts, op = m2
                    graph.replace(parts, [fused_node(graph, op, x, node.outputs[0], parts, {})])
                    changed = True
                    break
