"""torch's LPPool export ``Pow(x, p) -> AveragePool -> Sign*Relu(Abs) -> Mul(K) -> Pow(1/p)`` beyond the
p = 2 / full-window case: even p and ceil_mode become ``lipgraph:PowerMeanPool``; odd p and roots that
are not exactly 1/p stay refused (not Lipschitz).

Oracle: secant slopes of the model run by onnxruntime (float32, large steps so rounding stays ~1e-6 of
the slope) along the top singular direction of a finite-difference Jacobian, at random points and near
every basis vector: a lower estimate of the true constant. (onnx's reference evaluator is no oracle
here: it places 1-D ceil-mode windows differently from onnxruntime and torch.)
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from tests.helpers.onnx_oracle import make_model, runner


def lp_chain(
    shape,
    p: float,
    root: float,
    kernel,
    strides,
    pads=None,
    ceil: int = 0,
    cip: int = 1,
    scale: np.ndarray | None = None,
):
    nd = len(kernel)
    k = float(np.prod(kernel))
    inits = {
        "p": np.array(p, np.float32),
        "r": np.array(root, np.float32),
        "k": np.asarray(scale if scale is not None else k, np.float32),
    }
    pool = helper.make_node(
        "AveragePool",
        ["xp"],
        ["a"],
        kernel_shape=list(kernel),
        strides=list(strides),
        pads=list(pads or [0] * (2 * nd)),
        ceil_mode=ceil,
        count_include_pad=cip,
    )
    nodes = [
        helper.make_node("Pow", ["x", "p"], ["xp"]),
        pool,
        helper.make_node("Sign", ["a"], ["sg"]),
        helper.make_node("Abs", ["a"], ["ab"]),
        helper.make_node("Relu", ["ab"], ["rl"]),
        helper.make_node("Mul", ["sg", "rl"], ["m"]),
        helper.make_node("Mul", ["m", "k"], ["mk"]),
        helper.make_node("Pow", ["mk", "r"], ["y"]),
    ]
    return make_model(nodes, [("x", shape)], ["y"], inits)


CASES = {
    "p2-ceil": ((1, 1, 5, 5), 2.0, 0.5, (2, 2), (2, 2), None, 1, 1),
    "p4": ((1, 2, 4, 4), 4.0, 0.25, (2, 2), (2, 2), None, 0, 1),
    "p4-ceil": ((1, 1, 5, 5), 4.0, 0.25, (2, 2), (2, 2), None, 1, 1),
    "p4-overlap": ((1, 1, 5), 4.0, 0.25, (3,), (1,), None, 0, 1),
    "p2-pads-exclude": ((1, 1, 5), 2.0, 0.5, (3,), (2,), [1, 1], 0, 0),
    "p8-1d-ceil": ((1, 1, 7), 8.0, 0.125, (3,), (3,), None, 1, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_power_mean_pool_sound(case: str) -> None:
    shape, p, root, kernel, strides, pads, ceil, cip = CASES[case]
    m = lp_chain(shape, p, root, kernel, strides, pads, ceil, cip)
    a = analyze(m)
    assert [n.op_type for n in a.nodes] == ["PowerMeanPool"]
    n = int(np.prod(shape))
    rng = np.random.default_rng(0)
    points = [rng.standard_normal(n) for _ in range(3)] + [
        np.eye(n)[i] + 1e-2 * rng.standard_normal(n) for i in range(n)
    ]
    lower = ort_secant_lower(m, shape, points)
    assert a.bound >= lower * (1 - 1e-4)
    if case in ("p2-ceil", "p4", "p4-ceil", "p8-1d-ceil"):  # windows do not overlap: exact
        assert a.bound == pytest.approx(lower, rel=2e-3)


def ort_secant_lower(model, shape, points, h: float = 0.02) -> float:
    run = runner(model)

    def f(x: np.ndarray) -> np.ndarray:
        return run({"x": x.reshape(shape).astype(np.float32)})[0].astype(np.float64).ravel()

    best = 0.0
    for x in points:
        n = x.size
        jac = np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(n)], axis=1)
        v = np.linalg.svd(jac)[2][0]
        best = max(best, float(np.linalg.norm(f(x + h * v) - f(x - h * v)) / (2 * h)))
    return best


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(((1, 1, 4, 4), 3.0, float(np.float32(1 / 3)), (2, 2), (2, 2)), id="odd-p"),
        pytest.param(((1, 1, 4, 4), 6.0, float(np.float32(1 / 6)), (2, 2), (2, 2)), id="root-not-exactly-1/p"),
        pytest.param(((1, 1, 4, 4), 4.0, 0.5, (2, 2), (2, 2)), id="root-mismatch"),
        pytest.param(((1, 1, 4, 4), 2.5, 0.4, (2, 2), (2, 2)), id="fractional-p"),
    ],
)
def test_near_miss_refused(args) -> None:
    with pytest.raises(UnsupportedModelError):
        analyze(lp_chain(*args, ceil=1))


def test_broadcasting_scale_not_fused() -> None:
    m = lp_chain((1, 1, 5, 5), 4.0, 0.25, (2, 2), (2, 2), ceil=1, scale=np.full((1, 3, 1, 1), 4.0, np.float32))
    with pytest.raises(UnsupportedModelError):
        analyze(m)
