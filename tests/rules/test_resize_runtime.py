"""Resize modes where ONNX Runtime and onnx's reference evaluator compute different maps (issue 15, class 4).

The bound must cover the map ONNX Runtime computes (certify runs it) and the reference's. Oracle:
ONNX Runtime's own dense matrix of the whole 4-D op (basis vectors through a session), exact SVD in
float64; and the reference evaluator's, the same way in float64.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from lipgraph.analyze import analyze

SHAPE = [1, 1, 5, 3]


def _model(dtype: int, scales=None, sizes=None, roi=None, **attrs):
    x = helper.make_tensor_value_info("x", dtype, SHAPE)
    y = helper.make_tensor_value_info("y", dtype, None)
    inits, names = [], ["x"]
    for name, val, dt in (
        ("roi", roi, TensorProto.FLOAT),
        ("scales", scales, TensorProto.FLOAT),
        ("sizes", sizes, TensorProto.INT64),
    ):
        if val is None:
            names.append("")
        else:
            inits.append(helper.make_tensor(name, dt, [len(val)], val))
            names.append(name)
    while names[-1] == "":
        names.pop()
    g = helper.make_graph([helper.make_node("Resize", names, ["y"], **attrs)], "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def _dense(run, dtype) -> np.ndarray:
    n = int(np.prod(SHAPE))
    zero = run(np.zeros(SHAPE, dtype)).ravel()
    return np.array(
        [run(np.eye(n, dtype=dtype)[i].reshape(SHAPE)).ravel() - zero for i in range(n)], dtype=np.float64
    ).T


def _norms(case: dict) -> tuple[float, float]:
    m32 = _model(TensorProto.FLOAT, **case)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m32.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rt = _dense(lambda x: sess.run(None, {"x": x})[0], np.float32)
    ref_eval = ReferenceEvaluator(_model(TensorProto.DOUBLE, **case))
    ref = _dense(lambda x: ref_eval.run(None, {"x": x})[0], np.float64)
    return float(np.linalg.svd(rt, compute_uv=False)[0]), float(np.linalg.svd(ref, compute_uv=False)[0])


# Each case: ONNX Runtime's and the reference's norms differ by more than 1%.
CASES = {
    "pytorch_half_pixel_to_one_output": dict(
        scales=[1, 1, 1.0, 0.5], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"
    ),
    "pytorch_half_pixel_shrink": dict(
        scales=[1, 1, 0.3, 0.5], mode="linear", coordinate_transformation_mode="pytorch_half_pixel"
    ),
    "tf_crop_and_resize_roi": dict(
        scales=[1, 1, 1.0, 0.5],
        roi=[0, 0, 0, 0.2, 1, 1, 1, 0.9],
        mode="linear",
        coordinate_transformation_mode="tf_crop_and_resize",
    ),
    "tf_crop_and_resize_roi_nearest": dict(
        scales=[1, 1, 1.5, 1.0],
        roi=[0, 0, 0.2, 0, 1, 1, 0.9, 1],
        mode="nearest",
        coordinate_transformation_mode="tf_crop_and_resize",
    ),
    "cubic_antialias": dict(
        sizes=[1, 1, 1, 3], mode="cubic", antialias=1, coordinate_transformation_mode="pytorch_half_pixel"
    ),
    "cubic_antialias_shrink": dict(
        scales=[1, 1, 0.3, 1.0], mode="cubic", antialias=1, coordinate_transformation_mode="pytorch_half_pixel"
    ),
    "align_corners_fractional": dict(
        scales=[1, 1, 1.5, 1.0], mode="linear", coordinate_transformation_mode="align_corners"
    ),
    "cubic_align_corners_fractional": dict(
        scales=[1, 1, 1.5, 1.0], mode="cubic", coordinate_transformation_mode="align_corners"
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bound_covers_onnx_runtime_and_the_reference(name: str) -> None:
    case = CASES[name]
    rt, ref = _norms(case)
    assert abs(rt - ref) > 0.01 * max(rt, ref), "a case where the two implementations differ"
    bound = analyze(_model(TensorProto.FLOAT, **case)).bound
    assert bound >= rt and bound >= ref
    assert bound <= max(rt, ref) * (1 + 1e-4)  # and no looser than the larger of the two
