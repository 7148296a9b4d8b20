"""Float overflow: a certified ball must not reach inputs where ONNX Runtime's float32 values overflow.

The model ``h = relu([1e30, 1e30] x)``, ``y = [100, 1e-38 (h_1 - h_2)]`` has real logits ``[100, 0]`` everywhere:
class 0 by a margin of 100, and its float error at ``x = 2e8`` is tiny (the large hidden values meet weights of
1e-38). But at ``x' = 3.45e8`` the hidden values exceed float32's range: ONNX Runtime computes ``inf - inf = NaN``.
Without a range check the Lipschitz radius was 7e9 and the local bound's 1.5e8 (the largest eps), both past ``x'``
(1.45e8 away): the error model (Higham's, which assumes no overflow) held at x but not inside the ball.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import certify
from tests.helpers.onnx_oracle import runner


def _overflow_model() -> onnx.ModelProto:
    w1 = np.array([[1e30], [1e30]], np.float32)
    w2 = np.array([[0.0, 0.0], [1e-38, -1e-38]], np.float32)
    b2 = np.array([100.0, 0.0], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["z"], transB=1),
            helper.make_node("Relu", ["z"], ["h"]),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
        ],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("local", ["off", "auto"])
def test_a_ball_reaching_float32_overflow_is_not_certified(local: str) -> None:
    model = _overflow_model()
    run = runner(model)
    x = np.array([[2e8]], np.float32)
    x_bad = np.array([[3.45e8]], np.float32)
    dist = float(x_bad[0, 0]) - float(x[0, 0])
    at_x, at_bad = run({"x": x})[0], run({"x": x_bad})[0]
    assert np.all(np.isfinite(at_x)) and int(np.argmax(at_x)) == 0
    assert not np.all(np.isfinite(at_bad))  # the attack is real: NaN logits inside the old radii
    cert = certify(model, x, np.array([0]), eps=[1e6, 1e7, 3e7, 1.5e8], local_bounds=local)
    assert cert.correct[0]
    assert cert.radii[0] < dist, f"radius {cert.radii[0]:.4g} reaches NaN logits at {dist:.4g}"
    assert cert.radii[0] >= 3e7  # not vacuous: the ball up to the overflow is certified (x = 2e8, overflow at 3.4e8)
