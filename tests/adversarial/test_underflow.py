"""Float underflow: a certificate must not be fakeable with subnormal intermediate values.

The model ``y_0 = A * sum_i relu(x_i / 2)``, ``y_1 = b`` is fed ``x_i = 3 s`` (``s = 2^-149``, the smallest
float32 subnormal). Each ``x_i / 2 = 1.5 s`` is below float32's normal range, so ONNX Runtime rounds it to
``2 s`` (ties to even): an *absolute* error of ``s / 2`` per unit, which no relative error model (Higham's
``gamma_n``, valid without underflow) covers. ``A = 2^127`` lifts these errors to the logits' scale. Without an
absolute underflow term the certificate gave a radius of about ``24 s`` (both the Lipschitz and the local-bound
paths), while at ``x' = s`` (all entries; distance ``2 s sqrt(n) = 16 s``) ONNX Runtime predicts the other
class. The attack points are checked through ONNX Runtime itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import certify
from tests.helpers.onnx_oracle import runner

S = float(2.0**-149)


def _subnormal_model(n: int) -> onnx.ModelProto:
    a = 2.0**127
    w1 = (0.5 * np.eye(n)).astype(np.float32)
    w2 = np.zeros((2, n), np.float32)
    w2[0] = a
    b2 = np.array([0.0, 0.5 * n * S * a], np.float32)  # ORT's margin at 3s is 1.5 n s A, the real one n s A
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["z"], transB=1),
            helper.make_node("Relu", ["z"], ["h"]),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
        ],
        "subnormal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("local", ["off", "auto"])
def test_subnormal_rounding_cannot_fake_a_radius(local: str) -> None:
    n = 64
    model = _subnormal_model(n)
    run = runner(model)
    x = np.full((1, n), 3 * S, np.float32)
    x_flip = np.full((1, n), S, np.float32)
    dist = float(np.linalg.norm(x_flip.astype(np.float64) - x.astype(np.float64)))
    # the attack is real: ORT predicts 0 at x and 1 at x', which is 16 s away
    assert int(np.argmax(run({"x": x})[0])) == 0
    assert int(np.argmax(run({"x": x_flip})[0])) == 1
    eps = [dist * f for f in (0.5, 0.99, 1.01, 2.0)]
    cert = certify(model, x, np.array([0]), eps=eps, local_bounds=local)
    assert cert.correct[0]
    assert cert.radii[0] < dist, f"radius {cert.radii[0] / S:.2f} s covers a flip at {dist / S:.2f} s"
