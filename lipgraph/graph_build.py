"""ONNX model -> analysis graph: checks, the certified input, shape inference, constant folding.

Constants are folded with onnx's own reference evaluator, so shape arithmetic such as
``Shape -> Gather -> Concat -> Reshape`` from torch's legacy exporter becomes plain constants
(docs/composition.md).
"""

from __future__ import annotations

import math
import warnings as _warnings
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from lipgraph.declarations import check_declarations, light_copy, strip_declarations, topologically_sorted
from lipgraph.domains import normalize_domain
from lipgraph.errors import ModelLoadError
from lipgraph.graph import FLOAT_TYPES, Graph, Node, Tensor

# Ops whose output is random: never folded, never a data path.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
# Constant tensors larger than this are not folded (a huge declared shape must not blow up memory).
_MAX_FOLD_ELEMENTS = 50_000_000


def _attr_value(attr: onnx.AttributeProto) -> Any:
    if attr.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return attr  # kept opaque; nodes with subgraphs get no rule
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", errors="replace") for v in value]
    return value


def _dims(type_proto: onnx.TypeProto) -> tuple[int | None, ...] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out: list[int | None] = []
    for d in type_proto.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    return tuple(out)


def build_graph(
    model: onnx.ModelProto, input_name: str | None = None, input_shape: tuple[int, ...] | None = None
) -> Graph:
    """Build the analysis graph of ``model``: sort, choose the certified input, fold constants.

    ``input_shape`` (one sample, batch axis included as 1) fixes the input's symbolic dimensions,
    as `certify` does with the shape of its data: the bound then holds for inputs of that size,
    and conv bounds use the exact grid instead of the size-independent LMT bound.
    """
    if model.functions:
        # Exporters (torch's dynamo exporter among them) may wrap layers in model-local functions;
        # inline them so every primitive op meets its own rule instead of an unknown custom op.
        from onnx.inliner import inline_local_functions

        try:
            model = inline_local_functions(model)
        except Exception as exc:  # noqa: BLE001 - a malformed function body
            raise ModelLoadError(f"cannot inline the model's local functions ({type(exc).__name__}: {exc})") from None
    _check_text(model)
    # Shape inference reads nodes in file order: sort first (stable), so an out-of-order node
    # does not leave every later shape unknown.
    model = topologically_sorted(model)
    g = Graph()
    g.model = model
    for imp in model.opset_import:
        g.opsets[normalize_domain(imp.domain)] = int(imp.version)
    default_opset = g.opsets.get("ai.onnx")
    if default_opset is None:
        raise ModelLoadError("the model declares no ai.onnx opset; re-export it with a standard opset")
    newest = onnx.defs.onnx_opset_version()
    if default_opset < 1 or default_opset > newest:
        raise ModelLoadError(
            f"the model uses ai.onnx opset {default_opset}, but this onnx package knows opsets 1..{newest}; "
            "upgrade onnx or re-export the model"
        )
    graph = model.graph
    _refuse_unloaded_external_data(model)

    for init in graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as exc:  # noqa: BLE001 - malformed tensor payloads take many shapes
            raise ModelLoadError(f"initializer '{init.name}' cannot be decoded ({exc})") from None
        g.tensors[init.name] = Tensor(init.name, tuple(arr.shape), init.data_type, arr, False)
    for sp in graph.sparse_initializer:
        arr = numpy_helper.to_array(sp)
        g.tensors[sp.values.name] = Tensor(sp.values.name, tuple(arr.shape), sp.values.data_type, arr, False)

    candidates: list[tuple[str, int]] = []
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for inp in graph.input:
        if inp.name in g.tensors:
            continue  # an initializer also listed as an input (old exporters): a constant
        if inp.name not in used and inp.name != input_name:
            continue  # an input no node reads cannot be the certified one
        elem = inp.type.tensor_type.elem_type if inp.type.HasField("tensor_type") else 0
        candidates.append((inp.name, elem))
        g.tensors[inp.name] = Tensor(inp.name, _dims(inp.type), elem, None, False)
    float_inputs = [name for name, elem in candidates if elem in FLOAT_TYPES]
    if input_name is not None:
        if input_name not in {name for name, _ in candidates}:
            listed = ", ".join(name for name, _ in candidates) or "none"
            raise ModelLoadError(f"--input '{input_name}' is not a graph input; the inputs are: {listed}")
        g.input_name = input_name
    elif len(float_inputs) == 1:
        g.input_name = float_inputs[0]
    elif not float_inputs:
        raise ModelLoadError("the model has no float input to certify")
    else:
        raise ModelLoadError(
            "the model has several float inputs (" + ", ".join(float_inputs) + "); choose one with --input NAME"
        )
    if g.tensors[g.input_name].elem_type not in FLOAT_TYPES:
        raise ModelLoadError(f"input '{g.input_name}' is not a float tensor; lipgraph certifies float inputs")
    g.tensors[g.input_name].variable = True

    if not graph.output:
        raise ModelLoadError("the model declares no output")
    outs = list(graph.output)
    float_outs = [o for o in outs if o.type.tensor_type.elem_type in FLOAT_TYPES]
    chosen = float_outs[0] if float_outs else outs[0]
    g.output_name = chosen.name
    if len(outs) > 1:
        g.warnings.append(f"the model has {len(outs)} outputs; certifying '{chosen.name}'")

    seen_names: set[str] = set()
    for idx, np_ in enumerate(graph.node):
        name = np_.name or f"{np_.op_type}_{idx}"
        if name in seen_names:
            name = f"{name}_{idx}"
        seen_names.add(name)
        domain = normalize_domain(np_.domain)
        _check_attribute_types(np_, name, domain, g.opsets.get(domain, default_opset if domain == "ai.onnx" else 1))
        has_sub = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in np_.attribute)
        node = Node(
            name=name,
            op_type=np_.op_type,
            domain=domain,
            inputs=list(np_.input),
            outputs=list(np_.output),
            attrs={a.name: _attr_value(a) for a in np_.attribute},
            opset=g.opsets.get(domain, default_opset if domain == "ai.onnx" else 1),
            origin=[name],
            has_subgraph=has_sub,
        )
        g.nodes.append(node)
        for o in node.outputs:
            if o:
                g.tensor(o)
    for inp in graph.input:
        g.tensor(inp.name)
    g.sort()
    check_declarations(model)  # after the structure checks, so a dangling tensor is named first
    if not any(g.output_name in n.outputs for n in g.nodes) and g.output_name != g.input_name:
        raise ModelLoadError(f"no node produces the output '{g.output_name}'")
    g.prune_to_output()
    _mark_and_fold(g, model, input_shape)
    return g


def _check_text(model: onnx.ModelProto) -> None:
    """Protobuf hands back ``bytes`` for a string field that is not valid UTF-8 (a corrupt file):
    refuse it here rather than fail on a name somewhere downstream."""
    g = model.graph
    fields: list[Any] = [imp.domain for imp in model.opset_import] + [g.name]
    fields += [v.name for v in list(g.input) + list(g.output) + list(g.value_info) + list(g.initializer)]
    for n in g.node:
        fields += [n.name, n.op_type, n.domain, *n.input, *n.output, *(a.name for a in n.attribute)]
    if any(isinstance(f, bytes) for f in fields):
        bad = next(f for f in fields if isinstance(f, bytes))
        raise ModelLoadError(f"the model has a name that is not valid UTF-8 ({bad[:40]!r}); the file is corrupt")


def _check_attribute_types(proto: onnx.NodeProto, name: str, domain: str, opset: int) -> None:
    """An attribute whose type is not the one the op's schema declares (``alpha`` given as a list, a
    string ``axis``) makes the model malformed: say so here, before a rule reads it as a number."""
    if domain != "ai.onnx" or not proto.attribute:
        return
    try:
        schema = onnx.defs.get_schema(proto.op_type, opset, "")
    except Exception:  # noqa: BLE001 - an unknown op: the walker names it
        return
    for attr in proto.attribute:
        spec = schema.attributes.get(attr.name)
        if spec is None or attr.type == int(spec.type):
            continue
        got = onnx.AttributeProto.AttributeType.Name(attr.type)
        want = onnx.AttributeProto.AttributeType.Name(int(spec.type))
        raise ModelLoadError(
            f"node '{name}' ({proto.op_type}) has attribute '{attr.name}' of type {got}, but ONNX defines it as "
            f"{want}; the model is malformed"
        )


def _refuse_unloaded_external_data(model: onnx.ModelProto) -> None:
    """A ModelProto whose external data was never loaded would be read relative to the current
    directory by numpy_helper, with no check of where the path leads. Only the loader (which
    confines external data to the model's folder) may read it."""
    from lipgraph.loader import _external_tensors

    pending = _external_tensors(model)
    if pending:
        raise ModelLoadError(
            f"tensor '{pending[0].name}' refers to external data that is not loaded; pass the model's file "
            "path (lipgraph reads external data only from the model's own folder)"
        )


def _concrete_model(
    model: onnx.ModelProto, g: Graph, input_shape: tuple[int, ...] | None = None
) -> onnx.ModelProto:
    """A copy whose certified input has concrete dimensions where they are known.

    A symbolic batch becomes 1 (the bound is per sample); with ``input_shape``, every other
    symbolic dimension takes its value too, and a fixed dimension must agree with it.
    """
    # Without the large weights' payloads (they become typed graph inputs): only shape inference reads it.
    m = light_copy(model)
    for inp in m.graph.input:
        if inp.name != g.input_name:
            continue
        dims = inp.type.tensor_type.shape.dim
        if input_shape is not None:
            if len(dims) and len(dims) != len(input_shape):
                raise ModelLoadError(
                    f"input '{inp.name}' has rank {len(dims)}, but the data has rank {len(input_shape)}"
                )
            if not len(dims):
                for v in input_shape:
                    inp.type.tensor_type.shape.dim.add().dim_value = int(v)
                continue
            for i, (d, v) in enumerate(zip(dims, input_shape, strict=True)):
                fixed = d.HasField("dim_value") and d.dim_value > 0
                if i == 0 and len(dims) >= 2:
                    v = d.dim_value if fixed else 1
                if fixed and d.dim_value != v:
                    raise ModelLoadError(
                        f"input '{inp.name}' has size {d.dim_value} on axis {i}, the data has {v}"
                    )
                d.Clear()
                d.dim_value = int(v)
            continue
        if len(dims) >= 2 and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = 1
    return m


def _infer_shapes(g: Graph, base: onnx.ModelProto) -> None:
    """Record inferred shapes of every tensor, with folded constants given as initializers."""
    m = light_copy(base)  # (base is already light: this copy is small)
    strip_declarations(m)  # shapes and types from the nodes, never from what the file declares
    known_inits = {i.name for i in m.graph.initializer} | {i.name for i in m.graph.input}
    remove = {t.name for t in g.tensors.values() if t.value is not None and t.name not in known_inits}
    # Nodes whose outputs are all folded become initializers, so Reshape etc. see real shapes.
    keep_nodes = [n for n in m.graph.node if not (set(n.output) and set(n.output) <= remove)]
    del m.graph.node[:]
    m.graph.node.extend(keep_nodes)
    for name in sorted(remove):
        val = g.tensors[name].value
        if val is None or val.size > _MAX_FOLD_ELEMENTS or val.dtype == object:
            continue
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(val), name))
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            inferred = shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - shape inference failing is not fatal
        g.warnings.append(f"ONNX shape inference failed ({type(exc).__name__}); some bounds may be looser")
        return
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        t = g.tensors.get(vi.name)
        if t is None or t.value is not None:
            continue
        dims = _dims(vi.type)
        if dims is not None:
            t.shape = dims
        if vi.type.tensor_type.elem_type:
            t.elem_type = vi.type.tensor_type.elem_type


def _fold_node(
    g: Graph, node: Node, model: onnx.ModelProto, src: onnx.NodeProto | None
) -> list[np.ndarray] | None:
    """Evaluate a node whose inputs are all known constants, with onnx's reference evaluator.

    ``src`` is the node's original proto: its attributes are passed on untouched (the decoded
    ``node.attrs`` lose tensor and graph attribute types).
    """
    from onnx.reference import ReferenceEvaluator

    feeds: dict[str, np.ndarray] = {}
    for i in node.inputs:
        if not i:
            continue
        val = g.tensors[i].value
        if val is None:
            return None
        feeds[i] = val
    proto = helper.make_node(node.op_type, node.inputs, node.outputs, name=node.name, domain=(
        "" if node.domain == "ai.onnx" else node.domain))
    if src is not None:
        proto.ClearField("attribute")
        proto.attribute.extend(src.attribute)
    in_vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    out_vis = [helper.make_empty_tensor_value_info(o) for o in node.outputs if o]
    mini = helper.make_model(
        helper.make_graph([proto], "fold", in_vis, out_vis),
        opset_imports=[helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in g.opsets.items()],
    )
    mini.ir_version = model.ir_version or 8
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            outs = ReferenceEvaluator(mini).run(None, feeds)
    except Exception:  # noqa: BLE001 - an op the evaluator cannot run stays unfolded
        return None
    return [np.asarray(o) for o in outs]


def _mark_and_fold(g: Graph, model: onnx.ModelProto, input_shape: tuple[int, ...] | None = None) -> None:
    concrete = _concrete_model(model, g, input_shape)
    _infer_shapes(g, concrete)
    # Original protos by their outputs, looked up once per folded node (a scan each time was
    # quadratic in the legacy exporter's long shape-arithmetic chains).
    protos = {tuple(n.output): n for n in model.graph.node}
    for _round in range(3):
        changed = False
        for node in g.nodes:
            outs = [g.tensor(o) for o in node.outputs if o]
            if all(t.value is not None for t in outs):
                continue
            var_in = any(g.is_variable(i) for i in node.inputs if i)
            if node.op_type in ("Shape", "Size") and node.domain == "ai.onnx":
                for t in outs:
                    t.variable = False
                shape = g.shape_of(node.inputs[0])
                if shape is not None and all(d is not None for d in shape):
                    arr = _shape_op_value(node, shape)
                    if arr is not None:
                        outs[0].value = arr
                        changed = True
                continue
            if var_in:
                for t in outs:
                    t.variable = True
                continue
            if node.op_type in _NONDETERMINISTIC or node.has_subgraph:
                continue
            if _fold_too_large(g, node):
                continue  # a tiny file must not make lipgraph compute gigabytes of constants
            values = _fold_node(g, node, model, protos.get(tuple(node.outputs)))
            if values is None:
                continue
            for t, v in zip(outs, values, strict=False):
                if v.size <= _MAX_FOLD_ELEMENTS:
                    t.value = v
                    t.shape = tuple(int(d) for d in v.shape)
            changed = True
        if not changed:
            break
        _infer_shapes(g, concrete)
    # Nodes whose outputs are all constant are not part of the data path: drop them.
    g.nodes = [n for n in g.nodes if any(g.is_variable(o) for o in n.outputs if o)]


def _fold_too_large(g: Graph, node: Node) -> bool:
    """True when folding ``node`` would make an output above ``_MAX_FOLD_ELEMENTS`` elements, judged
    before evaluating it: from inferred shapes, and for the ops that size their output from input
    values (ConstantOfShape, Expand, Tile, Range) from those values."""
    for o in node.outputs:
        shape = g.tensors[o].shape if o in g.tensors else None
        if shape and all(d is not None for d in shape) and math.prod(shape) > _MAX_FOLD_ELEMENTS:
            return True
    vals = [g.tensors[i].value if i and i in g.tensors else None for i in node.inputs]
    try:
        if node.op_type in ("ConstantOfShape", "Expand") and vals[-1] is not None:
            dims = [abs(int(d)) for d in np.ravel(vals[-1])]
            base = vals[0].size if node.op_type == "Expand" and vals[0] is not None else 1
            return math.prod(dims) * max(base, 1) > _MAX_FOLD_ELEMENTS
        if node.op_type == "Tile" and len(vals) > 1 and vals[0] is not None and vals[1] is not None:
            return vals[0].size * math.prod(abs(int(r)) for r in np.ravel(vals[1])) > _MAX_FOLD_ELEMENTS
        if node.op_type == "Range" and len(vals) == 3 and all(v is not None for v in vals):
            start, limit, delta = (float(np.ravel(v)[0]) for v in vals)
            return delta != 0 and (limit - start) / delta > _MAX_FOLD_ELEMENTS
    except (TypeError, ValueError, OverflowError, IndexError):
        return True  # values that do not read as sizes: leave the node unfolded
    return False


def _shape_op_value(node: Node, shape: tuple[int | None, ...]) -> np.ndarray | None:
    dims = np.array(shape, dtype=np.int64)
    if node.op_type == "Size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    return dims[start:end if end is not None else None].copy()
