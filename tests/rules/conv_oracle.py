"""Test oracle for Conv / ConvTranspose: the exact norm of the op's dense matrix, built by running
every basis vector through onnxruntime on a one-node ONNX model (SPEC sec. 9)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def one_node_model(
    op: str, weight: np.ndarray, in_shape: tuple[int, ...], opset: int = OPSET, **attrs
) -> onnx.ModelProto:
    """A model ``y = op(x, W)`` with W an initializer and x of the given (static) shape."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.asarray(weight, dtype=np.float32), "W")
    attrs = {k: v for k, v in attrs.items() if v is not None}
    node = helper.make_node(op, ["x", "W"], ["y"], name=f"{op.lower()}0", **attrs)
    graph = helper.make_graph([node], "g", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def dense_matrix(op: str, weight: np.ndarray, in_shape: tuple[int, ...], **attrs) -> tuple[np.ndarray, tuple]:
    """The op's matrix (rows: outputs, columns: inputs of one sample) and the output shape.

    in_shape is (1, C, spatial...); the basis vectors go through as one batch. The model is
    rebuilt with that batch size so the input declaration matches.
    """
    n = math.prod(in_shape)
    batch_shape = (n,) + tuple(in_shape[1:])
    model = one_node_model(op, weight, batch_shape, **attrs)
    basis = np.eye(n, dtype=np.float32).reshape(batch_shape)
    y = run_model(model, basis)
    return y.reshape(n, -1).T.astype(np.float64), tuple(y.shape[1:])


def exact_norm(op: str, weight: np.ndarray, in_shape: tuple[int, ...], **attrs) -> float:
    """Largest singular value of the op's dense matrix (float32 weights, exact up to float noise).

    ORT computes in float32 with exact zeros/copies for a basis input (each output is a single
    weight times 1, or a float32 sum of such terms in the transposed case), so the matrix holds
    the float32 weights exactly; the SVD is float64.
    """
    a, _ = dense_matrix(op, weight, in_shape, **attrs)
    if a.size == 0:
        return 0.0
    return float(np.linalg.svd(a, compute_uv=False)[0])
