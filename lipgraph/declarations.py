"""What a model declares about itself versus what its graph computes.

An ONNX file carries declarations (the graph outputs' shapes and types, ``value_info``) beside the
nodes. ONNX shape inference keeps a *declared* shape or type when it conflicts with the inferred
one, so a crafted declaration (an intermediate tensor re-declared as an extra output with a smaller
grid, or an integer TopK index declared FLOAT) would change what the rules see while ONNX Runtime
computes something else. lipgraph therefore infers shapes and types from the nodes alone
(:func:`strip_declarations`) and refuses a model whose declarations contradict them
(:func:`check_declarations`). The nodes are also put in topological order first
(:func:`topologically_sorted`): shape inference reads them in file order, and one out-of-order
node would leave every shape after it unknown.
"""

from __future__ import annotations

import warnings as _warnings

import networkx as nx
import onnx
from onnx import helper, shape_inference

from lipgraph.errors import ModelLoadError


def topologically_sorted(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its nodes in a stable topological order by the graph's own edges.

    Returns ``model`` itself when the order is already topological (no copy), and leaves the order
    alone when the graph has a cycle (the graph builder names the cycle).
    """
    nodes = model.graph.node
    produced_by: dict[str, int] = {}
    for idx, n in enumerate(nodes):
        for o in n.output:
            if o:
                produced_by[o] = idx
    g = nx.DiGraph()
    g.add_nodes_from(range(len(nodes)))
    in_order = True
    for idx, n in enumerate(nodes):
        for i in n.input:
            src = produced_by.get(i)
            if src is not None and src != idx:
                g.add_edge(src, idx)
                in_order = in_order and src < idx
    if in_order:
        return model
    try:
        order = list(nx.lexicographical_topological_sort(g, key=lambda k: k))
    except nx.NetworkXUnfeasible:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    sorted_nodes = [m.graph.node[k] for k in order]
    copies = [onnx.NodeProto() for _ in sorted_nodes]
    for c, n in zip(copies, sorted_nodes, strict=True):
        c.CopyFrom(n)
    del m.graph.node[:]
    m.graph.node.extend(copies)
    return m


def strip_declarations(m: onnx.ModelProto, keep_inputs: bool = True) -> None:
    """Remove, in place, every declared shape and type that is not a graph input's.

    Graph outputs keep only their names and ``value_info`` is cleared, so that shape inference
    derives each tensor's shape and type from the nodes (it would keep a conflicting declaration).
    """
    outs = [helper.make_empty_tensor_value_info(o.name) for o in m.graph.output]
    del m.graph.output[:]
    m.graph.output.extend(outs)
    del m.graph.value_info[:]


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


def check_declarations(model: onnx.ModelProto) -> None:
    """Refuse ``model`` when a declared output or ``value_info`` contradicts the nodes' semantics.

    The shapes and types are inferred on a copy with the declarations stripped; a declared element
    type that differs from the inferred one, or a declared rank or fixed size that differs from an
    inferred fixed one, makes the model malformed. Where inference cannot tell, nothing is compared
    (and nothing declared is used: the analysis infers on a stripped copy as well).
    """
    declared = [vi for vi in list(model.graph.output) + list(model.graph.value_info) if vi.type.HasField("tensor_type")]
    if not declared:
        return
    try:
        m = light_copy(model)
        strip_declarations(m)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            inferred = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - nothing inferred, nothing to compare (and nothing declared is used)
        return
    found = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    inputs = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    for vi in declared:
        if vi.name in inputs:
            continue
        truth = found.get(vi.name)
        if truth is None or not truth.type.HasField("tensor_type"):
            continue
        d_type, t_type = vi.type.tensor_type.elem_type, truth.type.tensor_type.elem_type
        if d_type and t_type and d_type != t_type:
            raise ModelLoadError(
                f"tensor '{vi.name}' is declared {_type_name(d_type)}, but its producer makes {_type_name(t_type)}; "
                "the model is malformed (re-export it)"
            )
        d_dims, t_dims = _declared_dims(vi), _declared_dims(truth)
        if d_dims is None or t_dims is None:
            continue
        conflict = len(d_dims) != len(t_dims) or any(
            a is not None and b is not None and a != b for a, b in zip(d_dims, t_dims, strict=False)
        )
        if conflict:
            shown = [d if d is not None else "?" for d in d_dims]
            real = [d if d is not None else "?" for d in t_dims]
            raise ModelLoadError(
                f"tensor '{vi.name}' is declared with shape {shown}, but the graph computes {real}; "
                "the model is malformed (re-export it)"
            )


_SMALL = 4096  # initializers up to this many elements keep their values (shape arithmetic needs them)


def light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape inference without the large weights' payloads: a large initializer becomes a
    graph input of the same type and shape (all inference needs), so a 100 MB model is not copied."""
    src = model.graph
    g = onnx.GraphProto()
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    listed = {i.name for i in src.input}
    for init in src.initializer:
        n = 1
        for d in init.dims:
            n *= int(d)
        if n <= _SMALL:
            g.initializer.append(init)
        elif init.name not in listed:
            g.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    g.sparse_initializer.extend(src.sparse_initializer)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    m.graph.CopyFrom(g)
    return m


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return str(elem_type)
