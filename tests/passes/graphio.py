"""Test helper: turn an analysis graph (after passes) back into a runnable ONNX model.

Used as an oracle for the passes that promise to keep the function (folding, L2 pooling): the
rewritten graph, run by onnxruntime, must give the original model's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipgraph.graph import Graph


def graph_to_model(graph: Graph, opset: int | None = None) -> onnx.ModelProto:
    nodes = []
    needed: set[str] = set()
    for n in graph.nodes:
        assert n.domain == "ai.onnx", f"{n.op_type} in domain {n.domain} cannot run"
        attrs = {k: v for k, v in n.attrs.items() if not isinstance(v, onnx.AttributeProto)}
        nodes.append(helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name, **attrs))
        needed.update(i for i in n.inputs if i)
    inits = []
    for name in sorted(needed):
        t = graph.tensors[name]
        if t.variable or t.value is None or name == graph.input_name:
            continue
        val = np.asarray(t.value)
        if val.dtype == np.float64:
            val = val.astype(np.float32)
        inits.append(numpy_helper.from_array(val, name))
    xin = graph.tensors[graph.input_name]
    ins = [helper.make_tensor_value_info(graph.input_name, TensorProto.FLOAT, list(xin.shape or []))]
    outs = [helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "rewritten", ins, outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset or graph.opsets.get("ai.onnx", 17))])
    m.ir_version = 8
    return m


def op_types(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.nodes]
