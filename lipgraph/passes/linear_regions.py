"""Fuse index arithmetic around ``GatherND`` into one linear operator with an exact norm.

torch's dynamo exporter writes adaptive average pooling to a size that does not divide the input,
and 1-D linear interpolation, as gathers with constant indices, masks, sums and constant weights::

    adaptive pool:  Transpose -> GatherND -> Transpose -> Where(mask, 0, .) -> Gather/Add tree -> Div(counts)
    1-D linear:     GatherND(i0), GatherND(i1) -> Sub -> Mul(w) -> Add(x_i0, .)

Every op is linear in the data (plus constant offsets), so the whole subgraph is one affine map
``y = A x + b``; the per-op rules give a sound but loose bound (the Add tree alone sums nine copies),
while ``||A||_2`` is what the op computes. This pass grows, from the data input of each GatherND, the
largest set of such ops whose variable inputs all come from inside, and fuses it into one
``lipgraph:LinearRegion`` node when it has exactly one output read from outside. The rule
(lipgraph/rules/linear_region.py) builds ``A`` by running the region on basis vectors and takes its SVD.
"""

from __future__ import annotations

import math

from lipgraph.graph import Graph, Node
from lipgraph.passes.groupsort import const_value, fused_node, is_std, known_shape

# Ops that are linear in their variable inputs once every other input is a known constant.
# Add/Sub/Concat take several variable inputs; Mul needs its other factor constant, Div its divisor.
_LINEAR = {
    "Transpose",
    "GatherND",
    "Gather",
    "Where",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Identity",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Concat",
}
_DATA_INPUTS = {"Where": (1, 2), "Mul": (0, 1), "Div": (0,), "Add": None, "Sub": None, "Concat": None}
# The probe runs the region on all basis vectors at once (in chunks), so its work is the input size
# times the largest intermediate tensor; beyond these limits the generic per-op rules bound the ops.
MAX_REGION_INPUT = 16384
MAX_REGION_OUTPUT = 1 << 16
MAX_PROBE_WORK = 1 << 26


def _accepts(graph: Graph, node: Node, inside: set[str]) -> bool:
    """``node`` is linear in tensors of ``inside`` (at least one), every other input a known constant."""
    if not is_std(node, *_LINEAR) or len(node.outputs) != 1 or node.has_subgraph:
        return False
    allowed = _DATA_INPUTS.get(node.op_type, (0,))
    var_seen = False
    for i, name in enumerate(node.inputs):
        if not name:
            continue
        if graph.is_variable(name):
            if name not in inside or (allowed is not None and i not in allowed):
                return False
            var_seen = True
        elif const_value(graph, name) is None:
            return False
    if node.op_type == "Mul" and all(graph.is_variable(i) for i in node.inputs if i):
        return False  # a product of two variable tensors
    return var_seen


def _grow(graph: Graph, x0: str) -> list[Node]:
    inside = {x0}
    region: list[Node] = []
    for node in graph.nodes:  # topological order: producers come first
        if _accepts(graph, node, inside):
            region.append(node)
            inside.update(node.outputs)
    return region


def _exits(graph: Graph, region: list[Node]) -> list[str]:
    ids = {id(n) for n in region}
    out = []
    for n in region:
        for o in n.outputs:
            if graph.is_graph_output(o) or any(id(r) not in ids for r in graph.consumers(o)):
                out.append(o)
    return out


def _ancestors_within(graph: Graph, region: list[Node], tensor: str) -> list[Node]:
    by_output = {o: n for n in region for o in n.outputs}
    keep: set[int] = set()
    stack = [tensor]
    while stack:
        t = stack.pop()
        n = by_output.get(t)
        if n is None or id(n) in keep:
            continue
        keep.add(id(n))
        stack.extend(n.inputs)
    return [n for n in region if id(n) in keep]


def _worth_fusing(graph: Graph, region: list[Node]) -> bool:
    """Whether the per-op rules could be loose: something combines or scales copies of the data.

    Selections and layout changes alone (GatherND, Gather, Transpose, masks) compose exactly under the
    per-op rules, so probing them would only cost time.
    """
    for n in region:
        n_var = sum(1 for i in n.inputs if i and graph.is_variable(i))
        if n.op_type in ("Mul", "Div") or (n.op_type in ("Add", "Sub", "Concat", "Where") and n_var >= 2):
            return True
    return False


def _match(graph: Graph, seed: Node) -> tuple[str, str, list[Node]] | None:
    x0 = seed.inputs[0]
    region = _grow(graph, x0)
    for _ in range(len(region) + 1):
        exits = _exits(graph, region)
        if len(exits) <= 1:
            break
        # Several outputs leave the region: keep what feeds the last one (in topological order).
        region = _ancestors_within(graph, region, exits[-1])
    exits = _exits(graph, region)
    if len(exits) != 1 or len(region) < 2 or seed not in region or not _worth_fusing(graph, region):
        return None
    y = exits[0]
    sx, sy = known_shape(graph, x0), known_shape(graph, y)
    if sx is None or sy is None or math.prod(sx) > MAX_REGION_INPUT or math.prod(sy) > MAX_REGION_OUTPUT:
        return None
    shapes = [known_shape(graph, o) for n in region for o in n.outputs]
    if any(sh is None for sh in shapes):
        return None
    biggest = max(math.prod(sh) for sh in shapes if sh is not None)
    if math.prod(sx) * max(biggest, math.prod(sx)) > MAX_PROBE_WORK:
        return None
    return x0, y, region


def fuse_linear_regions(graph: Graph) -> None:
    """Replace each GatherND-centred linear region by one ``lipgraph:LinearRegion`` node."""
    done: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if not is_std(node, "GatherND") or node.name in done or not graph.is_variable(node.inputs[0]):
                continue
            done.add(node.name)
            m = _match(graph, node)
            if m is None:
                continue
            x0, y, region = m
            consts = {i: const_value(graph, i) for n in region for i in n.inputs if i and not graph.is_variable(i)}
            attrs = {
                "region": [(n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in region],
                "consts": consts,
                "shapes": {t: known_shape(graph, t) for t in [x0, *(o for n in region for o in n.outputs)]},
                "opset": graph.opsets.get("ai.onnx", 17),
            }
            graph.replace(region, [fused_node(graph, "LinearRegion", x0, y, region, attrs)])
            changed = True
            break
