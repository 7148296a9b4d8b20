"""Recognise wrap (circular) padding followed by a valid Conv and fuse them into one circular conv.

torch's ``padding_mode="circular"`` is exported two ways: the legacy exporter writes, per spatial
axis, ``Concat(Slice(x, -p_b:), x, Slice(x, :p_e))``; the dynamo exporter writes ``Pad(mode="wrap")``.
Bounded op by op, the padding costs ``sqrt(3)`` (or 2) per axis and the conv is bounded on the padded
grid. When the wrap pads on every spatial axis add up to exactly the conv's dilated reach minus one
and the conv itself has no padding, the pair *is* a circular convolution on the input's own grid,
whose norm is computed exactly (lipgraph/norms/circular.py). Anything else (a pad one short or one
long, one axis only, zero / reflect padding, slices that are not a wrap, a stride that does not
divide the axis) is left alone for the generic rules, which stay sound.
"""

from __future__ import annotations

import numpy as np

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import _slice_range, const_value, is_std, known_shape, norm_axis, only_consumer
from lipgraph.rules.registry import LIPGRAPH_DOMAIN


def _wrap_pad(graph: Graph, node: Node) -> tuple[str, dict[int, tuple[int, int]]] | None:
    """Pad(mode=wrap) with constant non-negative pads: (source, {axis: (begin, end)})."""
    mode = node.attrs.get("mode", "constant")
    if mode != "wrap":
        return None
    shape = known_shape(graph, node.inputs[0])
    if shape is None:
        return None
    rank = len(shape)
    if "pads" in node.attrs:
        pads = [int(v) for v in node.attrs["pads"]]
    else:
        v = const_value(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        if v is None:
            return None
        pads = [int(a) for a in np.asarray(v).reshape(-1)]
    axes = list(range(rank))
    if len(node.inputs) > 3 and node.inputs[3]:
        av = const_value(graph, node.inputs[3])
        if av is None:
            return None
        axes = [norm_axis(int(a), rank) for a in np.asarray(av).reshape(-1)]
        if any(a is None for a in axes) or len(set(axes)) != len(axes):
            return None
    if len(pads) != 2 * len(axes) or any(p < 0 for p in pads):
        return None
    out: dict[int, tuple[int, int]] = {}
    for j, ax in enumerate(axes):
        b, e = pads[j], pads[j + len(axes)]
        if b > shape[ax] or e > shape[ax]:
            return None  # a wrap longer than the axis: not the torch circular padding
        if b or e:
            out[ax] = (b, e)
    return node.inputs[0], out


def _wrap_concat(graph: Graph, node: Node) -> tuple[str, int, tuple[int, int], list[Node]] | None:
    """``Concat(x[-b:], x, x[:e])`` along one axis (either slice may be absent): (x, axis, (b, e), slices)."""
    if len(node.inputs) not in (2, 3):
        return None
    sy = known_shape(graph, node.outputs[0])
    if sy is None:
        return None
    axis = norm_axis(int(node.attrs.get("axis", 0)), len(sy))
    if axis is None:
        return None
    # The source is the one input that every other input slices.
    src = None
    for t in node.inputs:
        others = [graph.producer(o) for o in node.inputs if o != t]
        if all(is_std(p, "Slice") and p is not None and p.inputs[0] == t for p in others):
            src = t
    if src is None or node.inputs.count(src) != 1:
        return None
    sx = known_shape(graph, src)
    if sx is None or len(sx) != len(sy):
        return None
    n = sx[axis]
    pos = node.inputs.index(src)
    before, after = node.inputs[:pos], node.inputs[pos + 1 :]
    if len(before) > 1 or len(after) > 1:
        return None
    slices: list[Node] = []
    b = e = 0
    for part, is_before in ((before, True), (after, False)):
        if not part:
            continue
        p = graph.producer(part[0])
        if not is_std(p, "Slice") or not only_consumer(graph, part[0], node):
            return None
        assert p is not None
        r = _slice_range(graph, p)
        if r is None or r[0] != src or r[1] != axis:
            return None
        lo, hi = r[2], r[3]
        if hi <= lo:
            return None
        if is_before:
            if hi != n:
                return None  # the part before x must be x's tail
            b = hi - lo
        else:
            if lo != 0:
                return None  # the part after x must be x's head
            e = hi
        slices.append(p)
    if b == 0 and e == 0:
        return None
    return src, axis, (b, e), slices


def _match(graph: Graph, conv: Node) -> tuple[str, list[Node], dict[int, tuple[int, int]]] | None:
    """Walk back from a Conv's data input through wrap pads; the source, the pad nodes, the pads."""
    t = conv.inputs[0]
    pads: dict[int, tuple[int, int]] = {}
    parts: list[Node] = []
    readers = [conv]  # the nodes to be fused that read t: nothing else may read it
    while True:
        slices: list[Node] = []
        p = graph.producer(t)
        if p is None or graph.is_graph_output(t) or {id(r) for r in graph.consumers(t)} != {id(r) for r in readers}:
            break
        if is_std(p, "Pad"):
            found = _wrap_pad(graph, p)
            if found is None:
                break
            src, axes_pads = found
            if set(axes_pads) & set(pads):
                return None  # the same axis padded twice: not a single wrap
            pads.update(axes_pads)
        elif is_std(p, "Concat"):
            found_c = _wrap_concat(graph, p)
            if found_c is None:
                break
            src, axis, be, slices = found_c
            if axis in pads:
                return None
            pads[axis] = be
            parts.extend(slices)
        else:
            break
        parts.append(p)
        readers = [q for q in (p, *slices) if src in q.inputs]
        t = src
    if not parts:
        return None
    return t, parts, pads


def _fuse_one(graph: Graph) -> bool:
    for conv in graph.nodes:
        if not is_std(conv, "Conv") or len(conv.inputs) < 2 or not graph.is_variable(conv.inputs[0]):
            continue
        w = const_value(graph, conv.inputs[1])
        if w is None or w.ndim < 3 or (len(conv.inputs) > 2 and conv.inputs[2] and graph.is_variable(conv.inputs[2])):
            continue
        m = _match(graph, conv)
        if m is None:
            continue
        src, parts, pads = m
        d = w.ndim - 2
        sx = known_shape(graph, src)
        if sx is None or len(sx) != d + 2:
            continue
        if pads.keys() - set(range(2, d + 2)):
            continue  # wrap on the batch or channel axis
        if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        if any(int(v) != 0 for v in conv.attrs.get("pads", [0] * 2 * d)):
            continue  # zero padding on top of the wrap: not circular
        strides = [int(v) for v in conv.attrs.get("strides", [1] * d)]
        dilations = [int(v) for v in conv.attrs.get("dilations", [1] * d)]
        ok = True
        for j in range(d):
            span = (int(w.shape[2 + j]) - 1) * dilations[j] + 1
            b, e = pads.get(2 + j, (0, 0))
            if b + e != span - 1 or sx[2 + j] % strides[j]:
                ok = False  # a pad one short or long, or a stride that does not divide the axis
        if not ok:
            continue
        origin: list[str] = []
        for p in [*parts, conv]:
            origin.extend(p.origin or [p.name])
        fused = Node(
            name=graph.fresh_name("CircularConv"),
            op_type="CircularConv",
            domain=LIPGRAPH_DOMAIN,
            inputs=[src, *conv.inputs[1:]],
            outputs=list(conv.outputs),
            attrs={
                "group": int(conv.attrs.get("group", 1)),
                "strides": strides,
                "dilations": dilations,
                "wrap_pads": [pads.get(2 + j, (0, 0))[0] for j in range(d)]
                + [pads.get(2 + j, (0, 0))[1] for j in range(d)],
            },
            opset=1,
            origin=origin,
            rho=conv.rho,  # the kernel is the conv's own: a folded one keeps its rounding bound
        )
        graph.replace([*parts, conv], [fused])
        return True
    return False


def recognise_circular_convs(graph: Graph) -> None:
    """Fuse every exactly matched wrap-pad + valid Conv pair into a ``lipgraph:CircularConv`` node."""
    while _fuse_one(graph):
        pass
