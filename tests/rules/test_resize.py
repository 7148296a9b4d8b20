"""Oracle tests for Resize / Upsample (SPEC sec. 4 "Structure", sec. 9).

The oracle is the dense matrix of the op built by feeding basis vectors through onnxruntime (a
different implementation from the reference evaluator the rule uses). onnxruntime resizes in float32
only, so each entry is snapped to the nearest fraction with a small denominator (the real-arithmetic
weight; the cases are chosen so that the weights are such fractions) after checking the snap moves it
by less than 1e-6. Exception: onnxruntime's cubic mode tabulates its coefficients (its weights are off
by ~5e-5 from the ONNX formula, e.g. 1.222004 for the exact 1.10546875^2 = 1.222061), so cubic cases
compare with a 1e-4 relative tolerance on the raw float32 matrix.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError

LOW = 1 - 1e-9
FLOAT = TensorProto.FLOAT


def _model(shape, opset, op="Resize", scales=None, sizes=None, roi=None, **attrs):
    x = helper.make_tensor_value_info("x", FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", FLOAT, None)
    inits, names = [], ["x"]
    if op == "Upsample" and opset < 9:
        node = helper.make_node(op, ["x"], ["y"], scales=[float(s) for s in scales], **attrs)
    else:
        if op == "Upsample" or opset < 11:
            inits.append(helper.make_tensor("scales", FLOAT, [len(scales)], scales))
            names.append("scales")
        else:
            for name, val, dt in (("roi", roi, FLOAT), ("scales", scales, FLOAT), ("sizes", sizes, TensorProto.INT64)):
                if val is None:
                    names.append("")
                else:
                    inits.append(helper.make_tensor(name, dt, [len(val)], val))
                    names.append(name)
            while names[-1] == "":
                names.pop()
        node = helper.make_node(op, names, ["y"], **attrs)
    g = helper.make_graph([node], "g", [x], [y], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _dense(model, shape, max_den=512, snap=True):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    n = int(np.prod(shape))
    zero = sess.run(["y"], {"x": np.zeros(shape, np.float32)})[0].ravel()
    eye = np.eye(n, dtype=np.float32)
    a = np.array([sess.run(["y"], {"x": eye[i].reshape(shape)})[0].ravel() - zero for i in range(n)],
                 dtype=np.float64).T
    if not snap:
        return a
    snapped = np.vectorize(lambda v: float(Fraction(float(v)).limit_denominator(max_den)))(a)
    assert np.all(np.abs(snapped - a) <= 1e-6), "an interpolation weight is not a small fraction"
    return snapped


def _check(model, shape, tol=1e-9):
    exact = float(np.linalg.svd(_dense(model, shape, snap=tol < 1e-6), compute_uv=False)[0])
    bound = analyze(model).bound
    assert bound >= exact * (1 - tol)
    assert bound <= exact * (1 + tol)  # the per-axis probe is exact
    return exact, bound


SHAPE = [1, 2, 4, 5]

RESIZE_CASES = [
    # opset, inputs, attributes
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="nearest")),
    (13, dict(scales=[1, 1, 2, 3]), dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                         nearest_mode="floor")),
    (13, dict(scales=[1, 1, 1.5, 2.5]), dict(mode="nearest")),
    (13, dict(scales=[1, 1, 1.5, 0.5]), dict(mode="nearest", nearest_mode="round_prefer_ceil")),
    (13, dict(sizes=[1, 2, 7, 3]), dict(mode="nearest", coordinate_transformation_mode="align_corners",
                                        nearest_mode="ceil")),
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="linear")),
    (13, dict(scales=[1, 1, 1.5, 0.5]), dict(mode="linear")),
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    (13, dict(sizes=[1, 2, 7, 3]), dict(mode="linear", coordinate_transformation_mode="align_corners")),
    (11, dict(scales=[1, 1, 2, 2.5], roi=[]), dict(mode="linear", coordinate_transformation_mode="asymmetric")),
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="cubic")),
    (13, dict(scales=[1, 1, 2, 2]), dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)),
    (13, dict(sizes=[1, 2, 3, 5], roi=[0, 0, 0.25, 0, 1, 1, 0.75, 1]),
     dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=3.0)),
    (13, dict(sizes=[1, 2, 7, 9], roi=[0, 0, -0.5, 0.25, 1, 1, 1.0, 1.25]),
     dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-1.0)),
    (18, dict(scales=[2.0, 0.5]), dict(mode="linear", antialias=1, axes=[2, 3])),
    (18, dict(sizes=[8]), dict(mode="nearest", axes=[-1])),
    (19, dict(scales=[1, 1, 2, 2]), dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric")),
    (10, dict(scales=[1, 1, 1.5, 2.5]), dict(mode="nearest")),
    (10, dict(scales=[1, 1, 2, 0.5]), dict(mode="nearest")),
    (10, dict(scales=[1, 1, 2, 0.5]), dict(mode="linear")),
]


@pytest.mark.parametrize("case", RESIZE_CASES, ids=[str(i) for i in range(len(RESIZE_CASES))])
def test_resize_vs_dense(case):
    opset, ins, attrs = case
    tol = 1e-4 if attrs["mode"] == "cubic" else 1e-9
    _check(_model(SHAPE, opset, **ins, **attrs), SHAPE, tol)


@pytest.mark.parametrize("opset,scales,mode", [
    (9, [1, 1, 2, 3], "nearest"), (9, [1, 1, 1.5, 2.5], "nearest"), (9, [1, 1, 2, 1.5], "linear"),
    (7, [1, 1, 2, 2], "nearest"), (7, [1, 1, 3, 1], "linear"),
])
def test_upsample_vs_dense(opset, scales, mode):
    _check(_model(SHAPE, opset, op="Upsample", scales=scales, mode=mode), SHAPE)


def test_nearest_integer_upsampling_is_sqrt_of_repeats():
    """research/bounds.md 4.6: nearest with integer scales (sh, sw) has norm sqrt(sh * sw)."""
    m = _model(SHAPE, 13, scales=[1, 1, 2, 3], mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
    _, bound = _check(m, SHAPE)
    assert bound == pytest.approx(np.sqrt(6), rel=1e-12)


def test_resize_refuses_data_dependent_sizes():
    x = helper.make_tensor_value_info("x", FLOAT, SHAPE)
    y = helper.make_tensor_value_info("y", FLOAT, None)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),  # constant (folded): fine
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Cast", ["m"], ["mi"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["mi", "ax"], ["mu"]),
        helper.make_node("Slice", ["s", "st", "en"], ["s3"]),
        helper.make_node("Concat", ["s3", "mu"], ["sz"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sz"], ["y"], mode="nearest"),
    ]
    inits = [helper.make_tensor("ax", TensorProto.INT64, [1], [0]),
             helper.make_tensor("st", TensorProto.INT64, [1], [0]),
             helper.make_tensor("en", TensorProto.INT64, [1], [3])]
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(UnsupportedModelError) as err:
        analyze(m)
    assert "Resize" in str(err.value)


def test_resize_refuses_unknown_sizes():
    m = _model([1, 2, "H", "W"], 13, scales=[1, 1, 2, 2], mode="linear")
    with pytest.raises(UnsupportedModelError, match="known input shape"):
        analyze(m)
