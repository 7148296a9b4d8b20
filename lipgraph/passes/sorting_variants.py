"""Sorting units written other ways than lipgraph/passes/groupsort.py expects.

1. ``Where(Greater(a, b), a, b)`` and its variants are rewritten into ``Max(a, b)`` / ``Min(a, b)``
   (pass :func:`rewrite_where_max_min`, run before the sorting-unit recognition).
2. A pair sort without its closing Reshape is fused (pass :func:`recognise_open_pair_sorts`, after it).

Where:

LiResNet's MinMax (Hu et al. 2023) and other hand-written sorting units use ``torch.where(a > b, a, b)``
instead of ``torch.maximum``. A data-driven Where is refused by the generic rules (it selects by a
discontinuous test); but selecting the larger (or smaller) of the two tensors it compares is exactly
the elementwise max (min), ties included: on ``a == b`` both branches hold the same value. So:

* ``Where(Greater(p, q) or GreaterOrEqual(p, q), p, q)`` = Max(p, q); with the branches swapped, Min;
* ``Where(Less(p, q) or LessOrEqual(p, q), p, q)`` = Min(p, q); with the branches swapped, Max.

Broadcasting is the same for Where and Max/Min. The rewritten Max/Min then meet the MaxMin
recognition (lipgraph/passes/groupsort.py). A Where whose branches are not the two compared tensors
(``Where(Greater(a, b), a, c)``) is left alone and refused as before. The comparison node is removed
once no other node reads it.
"""

from __future__ import annotations

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import (
    _reduce_axis,
    fused_node,
    is_std,
    known_shape,
    norm_axis,
    only_consumer,
    reduce_max_min_pair,
    unused,
)

_GREATER = ("Greater", "GreaterOrEqual")
_LESS = ("Less", "LessOrEqual")


def _as_max_min(graph: Graph, where: Node) -> str | None:
    """ "Max" or "Min" when ``where`` selects the larger / smaller of the two tensors its condition compares."""
    if len(where.inputs) != 3:
        return None
    cmp = graph.producer(where.inputs[0])
    if not is_std(cmp, *_GREATER, *_LESS) or cmp is None or len(cmp.inputs) != 2:
        return None
    p, q = cmp.inputs
    if p == q or not (graph.is_variable(p) or graph.is_variable(q)):
        return None
    x, y = where.inputs[1], where.inputs[2]
    if (x, y) == (p, q):
        straight = True
    elif (x, y) == (q, p):
        straight = False
    else:
        return None
    picks_larger = straight == (cmp.op_type in _GREATER)
    return "Max" if picks_larger else "Min"


def rewrite_where_max_min(graph: Graph) -> None:
    """Replace each matching Where by a standard Max or Min node; drop comparisons left unread."""
    changed = False
    for where in list(graph.nodes):
        if not is_std(where, "Where"):
            continue
        op = _as_max_min(graph, where)
        if op is None:
            continue
        new = Node(
            name=where.name,
            op_type=op,
            domain="ai.onnx",
            inputs=[where.inputs[1], where.inputs[2]],
            outputs=list(where.outputs),
            attrs={},
            opset=where.opset,
            origin=list(where.origin or [where.name]),
        )
        graph.nodes[graph.nodes.index(where)] = new
        changed = True
    if not changed:
        return
    for cmp in list(graph.nodes):
        if is_std(cmp, *_GREATER, *_LESS) and all(unused(graph, o) for o in cmp.outputs):
            graph.nodes.remove(cmp)


# --------------------------------------------------------------------------- open pair sort


def _match_pairsort_open(graph: Graph, cat: Node) -> tuple[str, list[Node], dict] | None:
    """``Concat(ReduceMax(t, a), ReduceMin(t, a))`` along a, t of size 2 on a: sorts each pair of t.

    Whatever follows (the dynamo exporter drops the closing Reshape before a PixelUnshuffle), the
    Concat alone is a per-pair sort of ``t`` laid out along axis a: 1-Lipschitz from t.
    """
    pair = reduce_max_min_pair(graph, cat)
    if pair is None:
        return None
    p0, p1 = pair
    t = p0.inputs[0]
    if not graph.is_variable(t) or any(not only_consumer(graph, o, cat) for o in cat.inputs):
        return None
    st = known_shape(graph, t)
    if st is None:
        return None
    ax0, ax1 = _reduce_axis(graph, p0, len(st)), _reduce_axis(graph, p1, len(st))
    cat_axis = norm_axis(int(cat.attrs.get("axis", 0)), len(st))
    if ax0 is None or ax0 != ax1 or ax0 != cat_axis or st[ax0] != 2:
        return None
    if known_shape(graph, cat.outputs[0]) != st:
        return None
    return t, [p0, p1, cat], {"group": 2, "axis": ax0}


def recognise_open_pair_sorts(graph: Graph) -> None:
    """Fuse ``Concat(ReduceMax(t, a), ReduceMin(t, a))`` pair sorts left after the closed-form recognition."""
    found = True
    while found:
        found = False
        for node in graph.nodes:
            if is_std(node, "Concat"):
                m = _match_pairsort_open(graph, node)
                if m is not None:
                    t, parts, attrs = m
                    graph.replace(parts, [fused_node(graph, "PairSort", t, node.outputs[0], parts, attrs)])
                    found = True
                    break
