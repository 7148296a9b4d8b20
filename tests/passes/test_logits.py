"""The final-softmax cut: only a softmax over the classes of each sample may be cut."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lipgraph import analyze


def _model(softmax_axis: int, x_shape: list[int], opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((x_shape[-1], 5)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=softmax_axis),
    ]
    out_shape = x_shape[:-1] + [5]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_softmax_over_classes_is_cut() -> None:
    a = analyze(_model(-1, [1, 7]))
    assert a.logits_name == "logits"
    assert not any(n.op_type == "Softmax" for n in a.nodes)


def test_softmax_over_batch_axis_is_kept() -> None:
    a = analyze(_model(0, [4, 7]))
    assert a.logits_name == "probs"
    assert any(n.op_type == "Softmax" for n in a.nodes)
    assert any("not over the class axis" in w for w in a.warnings)


def test_softmax_per_row_of_3d_tensor_is_kept() -> None:
    a = analyze(_model(-1, [1, 3, 7]))
    assert a.logits_name == "probs"


def test_unused_float_input_is_not_a_candidate() -> None:
    m = _model(-1, [1, 7])
    m.graph.input.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1, 3]))
    a = analyze(m)
    assert a.input_name == "x"
