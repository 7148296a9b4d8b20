"""Compose linear sub-DAGs (nothing nonlinear between) into one ``lipgraph:LinearMap`` node.

Between two nonlinearities, consecutive linear ops (MatMul -> MatMul as in LBDN's head ``2 A^T B``,
Conv -> Conv, a Gemm followed by a Slice that keeps some of its outputs -- the "first channels" heads --,
Add/Sub of linear branches of one tensor, with Reshape/Transpose/Flatten between) are ONE linear map,
whose norm can be far below the product (or sum) of the parts' norms. This pass finds maximal such
regions with a single entry tensor and a single exit tensor, every intermediate tensor read only
inside the region (a tensor that also feeds another node keeps its own bound on that path), and
builds the region's exact dense matrix by pushing the standard basis of the entry through it in
float64 -- together with the same chain on the constants' absolute values, which bounds the float64
composition error (Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.5). The rule
(lipgraph/rules/linear.py) takes the SVD of that matrix. Biases are dropped: they do not change the map.

Size limits keep it cheap: the entry has at most ``MAX_ENTRY`` elements, every intermediate matrix at
most ``MAX_ENTRIES`` entries; larger regions are left to the per-op rules (sound, looser). Regions
with a single op that carries a norm and nothing a composition could tighten are left alone too.
"""

from __future__ import annotations

import math

import numpy as np

from lipgraph.graph import Graph, Node, Tensor
from lipgraph.norms.conv import ConvGeometry, _conv_apply, _grouped, resolve_pads
from lipgraph.norms.weight_rounding import compose
from lipgraph.passes.groupsort import const_value, known_shape
from lipgraph.rules.registry import LIPGRAPH_DOMAIN
from lipgraph.tail import _apply, _NotAffine

MAX_ENTRY = 4096  # elements of the region's input (columns of the dense matrix)
MAX_ENTRIES = 6_000_000  # float64 entries of any intermediate (basis x tensor) array

# Per-sample linear in their one variable input (constants are biases, scales or shapes).
_UNARY = {
    "Gemm", "MatMul", "Conv", "Add", "Sub", "Mul", "Div", "Neg", "Identity", "Dropout", "Flatten", "Reshape",
    "Squeeze", "Unsqueeze", "Transpose", "Cast", "Slice", "Pad",
}  # fmt: skip
_WEIGHTED = {"Gemm", "MatMul", "Conv", "CircularConv", "LinearMap"}


def _var_inputs(graph: Graph, node: Node) -> list[int]:
    return [k for k, i in enumerate(node.inputs) if i and graph.is_variable(i)]


def _is_linear(graph: Graph, node: Node) -> bool:
    if len(node.outputs) != 1:
        return False
    var = _var_inputs(graph, node)
    if node.domain == LIPGRAPH_DOMAIN:
        return node.op_type in ("CircularConv", "LinearMap") and var == [0]
    if node.domain != "ai.onnx" or node.op_type not in _UNARY:
        return False
    if node.op_type in ("Add", "Sub") and len(var) == 2:
        return True  # a sum of two linear branches (checked to meet again inside one region)
    if len(var) != 1:
        return False
    if node.op_type in ("Conv", "Slice", "Pad"):
        return var == [0]
    return True


def _region(graph: Graph, exit_node: Node, used: set[int]) -> list[Node]:
    """The largest linear region ending at ``exit_node`` whose inner tensors are read only inside it."""
    members = {id(exit_node): exit_node}
    changed = True
    while changed:
        changed = False
        for n in list(members.values()):
            for k in _var_inputs(graph, n):
                p = graph.producer(n.inputs[k])
                if p is None or id(p) in members or id(p) in used or not _is_linear(graph, p):
                    continue
                out = p.outputs[0]
                if graph.is_graph_output(out):
                    continue
                if all(id(c) in members for c in graph.consumers(out)):
                    members[id(p)] = p
                    changed = True
    return [n for n in graph.nodes if id(n) in members]


def _entry(graph: Graph, nodes: list[Node]) -> str | None:
    produced = {n.outputs[0] for n in nodes}
    entries = {n.inputs[k] for n in nodes for k in _var_inputs(graph, n) if n.inputs[k] not in produced}
    return next(iter(entries)) if len(entries) == 1 else None


def _worth_it(nodes: list[Node], graph: Graph) -> bool:
    weighted = sum(1 for n in nodes if n.op_type in _WEIGHTED)
    joins = sum(1 for n in nodes if n.op_type in ("Add", "Sub") and len(_var_inputs(graph, n)) == 2)
    slices = sum(1 for n in nodes if n.op_type == "Slice")
    return weighted >= 2 or (weighted >= 1 and (joins or slices))


def _conv_batch(graph: Graph, node: Node, x: np.ndarray, absolute: bool, circular: bool) -> tuple[np.ndarray, int]:
    """A Conv (or wrap-padded CircularConv) applied to a batch x (B, C, n...)."""
    w = const_value(graph, node.inputs[1])
    if w is None:
        raise _NotAffine("conv weight unknown")
    w = np.asarray(w, dtype=np.float64)
    if absolute:
        w = np.abs(w)
    d = w.ndim - 2
    groups = int(node.attrs.get("group", 1))
    strides = [int(v) for v in node.attrs.get("strides", [1] * d)]
    dil = [int(v) for v in node.attrs.get("dilations", [1] * d)]
    spatial = x.shape[2:]
    if circular:
        wp = [int(v) for v in node.attrs["wrap_pads"]]
        x = np.pad(x, [(0, 0), (0, 0)] + [(wp[j], wp[j + d]) for j in range(d)], mode="wrap")
        spatial = x.shape[2:]
        pb, pe = [0] * d, [0] * d
    else:
        pb, pe = resolve_pads(spatial, w.shape[2:], strides, dil, node.attrs.get("pads"), node.attrs.get("auto_pad"))
    geo = ConvGeometry(tuple(spatial), tuple(strides), tuple(dil), tuple(pb), tuple(pe))
    b, c = x.shape[:2]
    if c != groups * w.shape[1]:
        raise _NotAffine("conv channels")
    xg = np.moveaxis(x, 0, 1).reshape((groups, c // groups, b) + tuple(spatial))
    y = _conv_apply(_grouped(w, groups), geo, xg)  # (g, M/g, B, out...)
    y = y.reshape((w.shape[0], b) + y.shape[3:])
    return np.moveaxis(y, 1, 0), int(w.shape[1] * math.prod(w.shape[2:]))


def _slice_batch(graph: Graph, node: Node, x: np.ndarray) -> np.ndarray:
    vals = []
    for i in (1, 2, 3, 4):
        if i < len(node.inputs) and node.inputs[i]:
            v = const_value(graph, node.inputs[i])
            if v is None:
                raise _NotAffine("Slice bounds unknown")
            vals.append([int(a) for a in np.asarray(v).reshape(-1)])
        else:
            vals.append(None)
    starts, ends, axes, steps = vals
    if "starts" in node.attrs:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
    if starts is None or ends is None:
        raise _NotAffine("Slice bounds unknown")
    rank = x.ndim  # x carries the basis on axis 0 in place of the batch axis (of size 1)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = a + rank if a < 0 else a
        if not 0 <= a < rank or st == 0:
            raise _NotAffine("Slice of a bad axis")
        if a == 0:
            if slice(s, e, st).indices(1) != (0, 1, 1):
                raise _NotAffine("Slice drops the batch element")
            continue
        idx[a] = slice(*slice(s, e, st).indices(x.shape[a]))  # numpy clamps exactly as ONNX does
    return x[tuple(idx)]


def _pad_batch(graph: Graph, node: Node, x: np.ndarray) -> np.ndarray:
    """Constant-mode Pad (the constant is a bias: the linear part pads with zeros); no axes input."""
    mode = node.attrs.get("mode", "constant")
    if mode != "constant" or (len(node.inputs) > 3 and node.inputs[3]):
        raise _NotAffine("only constant-mode Pad over all axes")
    pads = node.attrs.get("pads")
    if pads is None:
        v = const_value(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        if v is None:
            raise _NotAffine("Pad amounts unknown")
        pads = [int(a) for a in np.asarray(v).reshape(-1)]
    r = x.ndim
    if len(pads) != 2 * r or pads[0] != 0 or pads[r] != 0 or any(int(p) < 0 for p in pads):
        raise _NotAffine("Pad of the batch axis or a crop")
    return np.pad(x, [(int(pads[i]), int(pads[i + r])) for i in range(r)])


def _step(graph: Graph, node: Node, vals: dict[str, np.ndarray], absolute: bool) -> tuple[np.ndarray, int]:
    var = _var_inputs(graph, node)
    op = node.op_type
    if op in ("Conv", "CircularConv"):
        return _conv_batch(graph, node, vals[node.inputs[0]], absolute, op == "CircularConv")
    if op == "Slice":
        return _slice_batch(graph, node, vals[node.inputs[0]]), 0
    if op == "Pad":
        return _pad_batch(graph, node, vals[node.inputs[0]]), 0
    if op in ("Add", "Sub") and len(var) == 2:
        a, b = vals[node.inputs[0]], vals[node.inputs[1]]
        if a.shape != b.shape:
            raise _NotAffine("a sum of branches with broadcasting")
        return (a + b if absolute or op == "Add" else a - b), 1
    return _apply(graph, node, var[0], vals[node.inputs[var[0]]], absolute)


def compose_region(graph: Graph, nodes: list[Node], entry: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(matrix, |matrix| bound, total inner dimension + ops) of the region, rows = exit, cols = entry."""
    shape = known_shape(graph, entry)
    if shape is None or not shape or shape[0] != 1:
        raise _NotAffine("entry shape")
    d = math.prod(shape[1:])
    basis = np.eye(d, dtype=np.float64).reshape((d, *shape[1:]))
    vals, avals = {entry: basis}, {entry: basis}
    inner = 0
    for n in nodes:
        y, k = _step(graph, n, vals, absolute=False)
        ya, _ = _step(graph, n, avals, absolute=True)
        if y.size > MAX_ENTRIES or y.shape[0] != d:
            raise _NotAffine("too large or lost the basis axis")
        expect = known_shape(graph, n.outputs[0])
        if expect is not None and tuple(y.shape[1:]) != tuple(expect[1:]):
            raise _NotAffine(f"{n.op_type} gave shape {y.shape[1:]}, the graph says {expect[1:]}")
        vals[n.outputs[0]], avals[n.outputs[0]] = y, ya
        inner += k + 1
    out = nodes[-1].outputs[0]
    mat, amat = vals[out].reshape(d, -1).T, avals[out].reshape(d, -1).T
    if not (np.all(np.isfinite(mat)) and np.all(np.isfinite(amat))):
        raise _NotAffine("non-finite")
    return np.ascontiguousarray(mat), np.ascontiguousarray(amat), inner


def compose_linear_maps(graph: Graph) -> None:
    """Replace every composable linear region by a ``lipgraph:LinearMap`` node with its dense matrix."""
    used: set[int] = set()
    for exit_node in reversed(list(graph.nodes)):
        if id(exit_node) in used or not _is_linear(graph, exit_node):
            continue
        nodes = _region(graph, exit_node, used)
        used.update(id(n) for n in nodes)
        if len(nodes) < 2 or not _worth_it(nodes, graph):
            continue
        entry = _entry(graph, nodes)
        eshape = known_shape(graph, entry) if entry else None
        oshape = known_shape(graph, exit_node.outputs[0])
        if entry is None or eshape is None or oshape is None or math.prod(eshape) > MAX_ENTRY:
            continue
        sizes = [known_shape(graph, n.outputs[0]) for n in nodes]
        if any(s is None or math.prod(s) * math.prod(eshape) > MAX_ENTRIES for s in sizes):
            continue  # checked before any array is built: a large region must cost nothing
        try:
            mat, amat, inner = compose_region(graph, nodes, entry)
        except (_NotAffine, ValueError, IndexError, TypeError):
            continue  # an op in a form the composition does not cover: the per-op rules stay
        stem = graph.fresh_name("LinearMap")
        m_name, a_name = f"{stem}_matrix", f"{stem}_abs"
        graph.tensors[m_name] = Tensor(m_name, mat.shape, None, mat, False)
        graph.tensors[a_name] = Tensor(a_name, amat.shape, None, amat, False)
        origin: list[str] = []
        for n in nodes:
            origin.extend(n.origin or [n.name])
        fused = Node(
            name=stem,
            op_type="LinearMap",
            domain=LIPGRAPH_DOMAIN,
            inputs=[entry, m_name, a_name],
            outputs=[exit_node.outputs[0]],
            attrs={
                "out_shape": list(oshape),
                "inner": inner,
                "ops": [n.op_type for n in nodes],
                # Members whose constants a pass computed in float64 (folded weights; a LinearMap or
                # CircularConv fused earlier carries its own): every path through the region multiplies a
                # subset of them, so prod (1 + rho_i) - 1 bounds the region's relative error entrywise.
                "rho": compose(*(float(n.attrs.get("rho", 0.0)) if n.op_type == "LinearMap" else n.rho
                                 for n in nodes)),
            },
            opset=1,
            origin=origin,
        )
        graph.replace(nodes, [fused])
