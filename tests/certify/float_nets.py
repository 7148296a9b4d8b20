"""Models for the float-error tests: the issue's cancelling Gemm pair, and a float64 oracle.

The oracle is the model itself with every float constant and the input in float64, run by onnx's
reference evaluator: its own rounding is about 2^29 times smaller than float32's, and the tests
compare against it with that much slack.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def cancelling_gemms(
    offset: float, n_in: int = 16, width: int = 64, k: int = 10, seed: int = 0
) -> tuple[onnx.ModelProto, tuple[np.ndarray, np.ndarray]]:
    """``Gemm(x, W1, b1 = +-offset) -> Gemm(W2, b2 = -b1 W2)``: the real network is ``x W1 W2``.

    Returns the model and the real network's affine map ``(A, b)`` with ``F(x) = x A + b`` in float64
    (from the float32 constants the model holds). ``offset = 0`` is the well-conditioned twin.
    """
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((n_in, width)) / np.sqrt(n_in)).astype(np.float32)
    b1 = (rng.choice([-1.0, 1.0], width) * offset).astype(np.float32)
    w2 = (rng.standard_normal((width, k)) / np.sqrt(width)).astype(np.float32)
    b2 = (-(b1.astype(np.float64) @ w2.astype(np.float64))).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Gemm", ["h", "w2", "b2"], ["y"])],
        "cancel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(v, n) for n, v in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    a = w1.astype(np.float64) @ w2.astype(np.float64)
    b = b1.astype(np.float64) @ w2.astype(np.float64) + b2.astype(np.float64)
    return m, (a, b)


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with float32 initializers, inputs, outputs and Casts in float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, init in enumerate(list(g.initializer)):
        if init.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name)
            )
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64)))
    return m


def run_float64(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    m = as_float64(model)
    sess = ReferenceEvaluator(m)
    name = m.graph.input[0].name
    return np.asarray(sess.run(None, {name: x.astype(np.float64)})[0], dtype=np.float64)
