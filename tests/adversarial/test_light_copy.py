"""Shapes inferred on the weight-free copy (``declarations.light_copy``) against the shapes ONNX Runtime computes.

The copy replaces initializers above 4096 elements by typed graph inputs, so shape inference cannot read their
values. A model whose shape arguments (Reshape, Expand, ConstantOfShape, Tile, Slice) are computed from large
initializers must still get every tensor's shape right, or unknown: never a different one. The oracle is ONNX
Runtime run with every intermediate tensor exposed as an output.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lipgraph.declarations import _SMALL
from lipgraph.graph_build import build_graph


def _model() -> onnx.ModelProto:
    big_shape = np.zeros(_SMALL + 904, np.int64)  # a large integer initializer whose head holds shapes
    big_shape[:4] = [1, 10, 10, 1]
    big_shape[4:7] = [1, 2, 1]
    w = (np.random.default_rng(0).standard_normal((100, 64)) * 0.1).astype(np.float32)  # 6400 elements
    w2 = (np.random.default_rng(1).standard_normal((64, 80)) * 0.1).astype(np.float32)  # 5120 elements
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["big", "s0", "s2"], ["shape_a"]),  # [1, 10, 10, 1]... first two: [1, 10]
        helper.make_node("Concat", ["shape_a", "ten"], ["shape_b"], axis=0),  # [1, 10, 10]
        helper.make_node("Reshape", ["x", "shape_b"], ["r"]),  # (1, 10, 10)
        helper.make_node("Reshape", ["r", "flat"], ["f"]),  # (1, 100)
        helper.make_node("MatMul", ["f", "w"], ["h"]),  # (1, 64)
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Slice", ["big", "s4", "s7"], ["rep"]),  # [1, 2, 1]
        helper.make_node("Unsqueeze", ["a", "ax1"], ["a3"]),  # (1, 1, 64)
        helper.make_node("Tile", ["a3", "rep"], ["t"]),  # (1, 2, 64)
        helper.make_node("Slice", ["big", "s0", "s2"], ["cs_shape"]),  # [1, 10]
        helper.make_node("ConstantOfShape", ["cs_shape"], ["zeros"]),  # (1, 10) float 0
        helper.make_node("ReduceSum", ["t", "ax1"], ["s"], keepdims=0),  # (1, 64)
        helper.make_node("MatMul", ["s", "w2"], ["o80"]),  # (1, 80)
        helper.make_node("Slice", ["o80", "s0", "s10", "ax1"], ["o10"]),  # (1, 10)
        helper.make_node("Add", ["o10", "zeros"], ["y"]),  # (1, 10)
    ]
    inits = [
        numpy_helper.from_array(big_shape, "big"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(w2, "w2"),
        i64("s0", [0]),
        i64("s2", [2]),
        i64("s4", [4]),
        i64("s7", [7]),
        i64("s10", [10]),
        i64("ten", [10]),
        i64("flat", [1, 100]),
        i64("ax1", [1]),
    ]
    graph = helper.make_graph(
        nodes,
        "light",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 100])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_light_copy_shapes_agree_with_onnx_runtime() -> None:
    model = _model()
    graph = build_graph(model, "x")
    names = [o for node in model.graph.node for o in node.output]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    del exposed.graph.output[:]
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    sess = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(names, sess.run(None, {"x": np.ones((1, 100), np.float32)}), strict=True))
    known = 0
    for name, val in values.items():
        shape = graph.shape_of(name)
        if shape is None:
            continue
        assert len(shape) == val.ndim, (name, shape, val.shape)
        for d, real in zip(shape, val.shape, strict=True):
            assert d is None or d == real, (name, shape, val.shape)
            known += d is not None
    # not vacuous: the Reshape, Tile and ConstantOfShape outputs (fed by the large initializer) are known
    for name in ("r", "t", "zeros", "y"):
        assert graph.shape_of(name) == values[name].shape, (name, graph.shape_of(name), values[name].shape)
    assert known >= 20
