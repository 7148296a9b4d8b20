"""Recognise 1-Lipschitz sorting units written as standard ops and fuse each into one node.

Sorting inside groups is a piecewise permutation, hence 1-Lipschitz in L2 (Anil, Lucas, Grosse,
ICML 2019); the generic per-op rules lose ``sqrt(2)`` per MaxMin layer (Max and Min of two halves
each get ``sqrt(2) L``). docs/operators.md "GroupSort and MaxMin" lists the forms matched here:

* GroupSort: ``Reshape -> TopK(k = the whole axis, sorted) -> Reshape`` (back to the input shape);
* MaxMin: ``Split`` into two halves (or two ``Slice`` of complementary halves, legacy exporter)
  ``-> Max, Min`` of the same two halves ``-> Concat`` along the split axis;
* pair-sort: ``Reshape(.., 2) -> ReduceMin, ReduceMax (keepdims, the size-2 axis) -> Concat``
  (same axis) ``-> Reshape`` back to the input shape (deel-torchlip GroupSort2, GloRo MinMax);
* CReLU: ``Concat(Relu(x), Relu(Neg(x)))`` (deel-torchlip's ``MaxMin``).

Every check is exact (axes, sizes, the same source tensor, halves that are disjoint and cover the
axis) and every intermediate tensor must be used only inside the unit; otherwise nothing is fused
and the generic rules give their larger, still sound bound. The fused node lives in the
``lipgraph`` domain; its rule (lipgraph/rules/groupsort.py) gives ``L_y = L_u``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.rules.registry import LIPGRAPH_DOMAIN

# --------------------------------------------------------------------------- shared match helpers


def only_consumer(graph: Graph, tensor: str, node: Node) -> bool:
    """True when ``node`` is the only reader of ``tensor`` and the tensor is not the graph output."""
    if graph.is_graph_output(tensor):
        return False
    readers = graph.consumers(tensor)
    return len(readers) == 1 and readers[0] is node


def unused(graph: Graph, tensor: str) -> bool:
    """True when nothing reads ``tensor`` (an empty name counts as unused)."""
    return not tensor or (not graph.is_graph_output(tensor) and not graph.consumers(tensor))


def const_value(graph: Graph, name: str) -> np.ndarray | None:
    """The folded value of a constant tensor (None when variable, absent or unknown)."""
    if not name:
        return None
    t = graph.tensors.get(name)
    if t is None or t.variable:
        return None
    return t.value


def known_shape(graph: Graph, name: str) -> tuple[int, ...] | None:
    """The fully known static shape of ``name``, else None."""
    s = graph.shape_of(name)
    if s is None or any(d is None for d in s):
        return None
    return tuple(int(d) for d in s)


def norm_axis(axis: int, rank: int) -> int | None:
    a = axis + rank if axis < 0 else axis
    return a if 0 <= a < rank else None


def is_std(node: Node | None, *ops: str) -> bool:
    return node is not None and node.domain == "ai.onnx" and node.op_type in ops


def fused_node(graph: Graph, op_type: str, x: str, y: str, parts: list[Node], attrs: dict) -> Node:
    origin: list[str] = []
    for p in parts:
        origin.extend(p.origin or [p.name])
    return Node(
        name=graph.fresh_name(op_type),
        op_type=op_type,
        domain=LIPGRAPH_DOMAIN,
        inputs=[x],
        outputs=[y],
        attrs=attrs,
        opset=1,
        origin=origin,
    )


def _attr_or_input_ints(graph: Graph, node: Node, attr: str, idx: int) -> list[int] | None:
    """An int list given as attribute (older opsets) or as constant input ``idx`` (newer ones)."""
    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    if idx < len(node.inputs) and node.inputs[idx]:
        v = const_value(graph, node.inputs[idx])
        if v is None:
            return None
        return [int(a) for a in np.asarray(v).reshape(-1)]
    return []


# --------------------------------------------------------------------------- GroupSort (TopK)


def _match_topk(graph: Graph, topk: Node) -> tuple[Node, list[Node], dict] | None:
    if len(topk.inputs) < 2 or not graph.is_variable(topk.inputs[0]):
        return None
    if int(topk.attrs.get("sorted", 1)) != 1:
        return None  # unsorted values come in an unspecified (possibly discontinuous) order
    if len(topk.outputs) > 1 and not unused(graph, topk.outputs[1]):
        return None  # the indices are used: not a pure sort
    r1 = graph.producer(topk.inputs[0])
    if not is_std(r1, "Reshape") or not only_consumer(graph, topk.inputs[0], topk):
        return None
    readers = graph.consumers(topk.outputs[0])
    if len(readers) != 1 or not is_std(readers[0], "Reshape") or graph.is_graph_output(topk.outputs[0]):
        return None
    r2 = readers[0]
    if r2.inputs[0] != topk.outputs[0]:
        return None
    if "k" in topk.attrs:  # opset 1-9
        k = int(topk.attrs["k"])
    else:
        kv = const_value(graph, topk.inputs[1])
        if kv is None or kv.size != 1:
            return None
        k = int(np.asarray(kv).reshape(-1)[0])
    x, mid = r1.inputs[0], topk.inputs[0]
    sx, smid, sy = known_shape(graph, x), known_shape(graph, mid), known_shape(graph, r2.outputs[0])
    if sx is None or smid is None or sy is None:
        return None
    axis = norm_axis(int(topk.attrs.get("axis", -1)), len(smid))
    if axis is None or smid[axis] != k or k < 1:
        return None  # TopK must keep the whole group
    if sy != sx:
        return None  # the final Reshape must restore the input layout
    return r2, [r1, topk, r2], {"group": k, "axis": axis}


# --------------------------------------------------------------------------- MaxMin


def _slice_range(graph: Graph, node: Node) -> tuple[str, int, int, int] | None:
    """(source, axis, begin, end) of a one-axis, step-1 Slice with constant bounds, else None."""
    src = node.inputs[0]
    shape = known_shape(graph, src)
    if shape is None:
        return None
    if "starts" in node.attrs:  # opset 1-9
        starts = [int(v) for v in node.attrs["starts"]]
        ends = [int(v) for v in node.attrs["ends"]]
        axes = [int(v) for v in node.attrs.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        vals = []
        for i in (1, 2, 3, 4):
            if i < len(node.inputs) and node.inputs[i]:
                v = const_value(graph, node.inputs[i])
                if v is None:
                    return None
                vals.append([int(a) for a in np.asarray(v).reshape(-1)])
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
        if starts is None or ends is None:
            return None
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
    if not (len(starts) == len(ends) == len(axes) == len(steps) == 1) or steps[0] != 1:
        return None
    axis = norm_axis(axes[0], len(shape))
    if axis is None:
        return None
    dim = shape[axis]

    def clamp(v: int) -> int:
        v = v + dim if v < 0 else v
        return min(max(v, 0), dim)

    return src, axis, clamp(starts[0]), clamp(ends[0])


def _halves(graph: Graph, a: str, b: str) -> tuple[str, int, list[Node]] | None:
    """If ``a`` and ``b`` are the two halves of one tensor along one axis: (source, axis, nodes)."""
    pa, pb = graph.producer(a), graph.producer(b)
    if pa is None or pb is None:
        return None
    if pa is pb and is_std(pa, "Split"):
        split = pa
        if len(split.outputs) != 2 or set(split.outputs) != {a, b}:
            return None
        src = split.inputs[0]
        shape = known_shape(graph, src)
        if shape is None:
            return None
        axis = norm_axis(int(split.attrs.get("axis", 0)), len(shape))
        if axis is None or shape[axis] % 2:
            return None
        sizes = _attr_or_input_ints(graph, split, "split", 1)
        if sizes is None:
            return None
        half = shape[axis] // 2
        if sizes and sizes != [half, half]:
            return None
        for o in split.outputs:
            so = known_shape(graph, o)
            if so is None or so[axis] != half:
                return None
        return src, axis, [split]
    if is_std(pa, "Slice") and is_std(pb, "Slice"):
        ra, rb = _slice_range(graph, pa), _slice_range(graph, pb)
        if ra is None or rb is None or ra[0] != rb[0] or ra[1] != rb[1]:
            return None
        src, axis = ra[0], ra[1]
        shape = known_shape(graph, src)
        assert shape is not None
        dim = shape[axis]
        lo, hi = sorted([(ra[2], ra[3]), (rb[2], rb[3])])
        if dim % 2 or lo != (0, dim // 2) or hi != (dim // 2, dim):
            return None
        return src, axis, [pa, pb]
    return None


def _match_maxmin(graph: Graph, cat: Node) -> tuple[str, list[Node], dict] | None:
    if len(cat.inputs) != 2:
        return None
    p0, p1 = graph.producer(cat.inputs[0]), graph.producer(cat.inputs[1])
    if p0 is None or p1 is None or {p0.op_type, p1.op_type} != {"Max", "Min"}:
        return None
    if not (is_std(p0, "Max", "Min") and is_std(p1, "Max", "Min")):
        return None
    if len(p0.inputs) != 2 or len(p1.inputs) != 2 or set(p0.inputs) != set(p1.inputs):
        return None  # Max and Min must take the same two tensors
    a, b = p0.inputs
    if a == b:
        return None
    for t in cat.inputs:
        if not only_consumer(graph, t, cat):
            return None
    found = _halves(graph, a, b)
    if found is None:
        return None
    src, axis, split_nodes = found
    for t in (a, b):
        readers = graph.consumers(t)
        if graph.is_graph_output(t) or len(readers) != 2 or {id(r) for r in readers} != {id(p0), id(p1)}:
            return None
    sy = known_shape(graph, cat.outputs[0])
    sx = known_shape(graph, src)
    if sy is None or sx is None or sy != sx:
        return None
    cat_axis = norm_axis(int(cat.attrs.get("axis", 0)), len(sy))
    if cat_axis != axis:
        return None
    return src, [*split_nodes, p0, p1, cat], {"axis": axis}


# --------------------------------------------------------------------------- pair-sort


def _reduce_axis(graph: Graph, node: Node, rank: int) -> int | None:
    if int(node.attrs.get("keepdims", 1)) != 1:
        return None
    axes = _attr_or_input_ints(graph, node, "axes", 1)
    if axes is None or len(axes) != 1:
        return None  # an empty list reduces all axes (or none): not a pair-sort
    return norm_axis(axes[0], rank)


def reduce_max_min_pair(graph: Graph, cat: Node) -> tuple[Node, Node] | None:
    """The ReduceMax and ReduceMin (in the Concat's order) of one tensor that ``cat`` joins, or None."""
    if len(cat.inputs) != 2:
        return None
    p0, p1 = graph.producer(cat.inputs[0]), graph.producer(cat.inputs[1])
    if not (is_std(p0, "ReduceMin", "ReduceMax") and is_std(p1, "ReduceMin", "ReduceMax")):
        return None
    assert p0 is not None and p1 is not None
    if {p0.op_type, p1.op_type} != {"ReduceMin", "ReduceMax"} or p0.inputs[0] != p1.inputs[0]:
        return None
    return p0, p1


def _match_pairsort(graph: Graph, cat: Node) -> tuple[str, str, list[Node], dict] | None:
    pair = reduce_max_min_pair(graph, cat)
    if pair is None:
        return None
    p0, p1 = pair
    mid = p0.inputs[0]
    r1 = graph.producer(mid)
    if not is_std(r1, "Reshape"):
        return None
    assert r1 is not None
    readers = graph.consumers(mid)
    if graph.is_graph_output(mid) or len(readers) != 2 or {id(r) for r in readers} != {id(p0), id(p1)}:
        return None
    for t in cat.inputs:
        if not only_consumer(graph, t, cat):
            return None
    smid = known_shape(graph, mid)
    if smid is None:
        return None
    ax0, ax1 = _reduce_axis(graph, p0, len(smid)), _reduce_axis(graph, p1, len(smid))
    cat_axis = norm_axis(int(cat.attrs.get("axis", 0)), len(smid))
    if ax0 is None or ax0 != ax1 or ax0 != cat_axis or smid[ax0] != 2:
        return None  # groups of exactly two, reduced and re-joined along the same axis
    out = graph.consumers(cat.outputs[0])
    if len(out) != 1 or not is_std(out[0], "Reshape") or graph.is_graph_output(cat.outputs[0]):
        return None
    r2 = out[0]
    if r2.inputs[0] != cat.outputs[0]:
        return None
    x, y = r1.inputs[0], r2.outputs[0]
    sx, sy = known_shape(graph, x), known_shape(graph, y)
    if sx is None or sy is None or sx != sy or known_shape(graph, cat.outputs[0]) != smid:
        return None
    return x, y, [r1, p0, p1, cat, r2], {"group": 2}


# --------------------------------------------------------------------------- CReLU


def _match_crelu(graph: Graph, cat: Node) -> tuple[str, list[Node], dict] | None:
    if len(cat.inputs) != 2:
        return None
    relus = [graph.producer(t) for t in cat.inputs]
    if not all(is_std(r, "Relu") for r in relus):
        return None
    for t in cat.inputs:
        if not only_consumer(graph, t, cat):
            return None
    ins = [r.inputs[0] for r in relus if r is not None]
    negs = [graph.producer(t) for t in ins]
    for j in (0, 1):
        neg = negs[1 - j]
        if not is_std(neg, "Neg"):
            continue
        assert neg is not None
        x = ins[j]
        if neg.inputs[0] != x or not only_consumer(graph, ins[1 - j], relus[1 - j]):
            continue
        if not graph.is_variable(x):
            return None
        parts = [r for r in relus if r is not None] + [neg, cat]
        return x, parts, {"axis": int(cat.attrs.get("axis", 0))}
    return None


# --------------------------------------------------------------------------- the pass


def recognise_sorting_units(graph: Graph) -> None:
    """Fuse every exactly matched GroupSort / MaxMin / pair-sort / CReLU subgraph into one node."""
    matchers: list[Callable[[Graph], bool]] = [_fuse_topk, _fuse_maxmin, _fuse_pairsort, _fuse_crelu]
    for fuse in matchers:
        while fuse(graph):
            pass


def _fuse_topk(graph: Graph) -> bool:
    for node in graph.nodes:
        if is_std(node, "TopK"):
            m = _match_topk(graph, node)
            if m is not None:
                r2, parts, attrs = m
                new = fused_node(graph, "GroupSort", parts[0].inputs[0], r2.outputs[0], parts, attrs)
                graph.replace(parts, [new])
                return True
    return False


def _fuse_maxmin(graph: Graph) -> bool:
    for node in graph.nodes:
        if is_std(node, "Concat"):
            m = _match_maxmin(graph, node)
            if m is not None:
                src, parts, attrs = m
                graph.replace(parts, [fused_node(graph, "MaxMin", src, node.outputs[0], parts, attrs)])
                return True
    return False


def _fuse_pairsort(graph: Graph) -> bool:
    for node in graph.nodes:
        if is_std(node, "Concat"):
            m = _match_pairsort(graph, node)
            if m is not None:
                x, y, parts, attrs = m
                graph.replace(parts, [fused_node(graph, "PairSort", x, y, parts, attrs)])
                return True
    return False


def _fuse_crelu(graph: Graph) -> bool:
    for node in graph.nodes:
        if is_std(node, "Concat"):
            m = _match_crelu(graph, node)
            if m is not None:
                x, parts, attrs = m
                graph.replace(parts, [fused_node(graph, "CReLU", x, node.outputs[0], parts, attrs)])
                return True
    return False
