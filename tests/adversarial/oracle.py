"""The lower estimate every adversarial model is checked against, from ONNX Runtime's own outputs.

For a function f computed by ONNX Runtime, any secant ratio ``||f(a) - f(b)|| / ||a - b||`` is at
most its Lipschitz constant (up to the runtime's rounding). We take it along the top right singular
vector of a central-difference Jacobian at random points (exact for linear and, away from kinks,
piecewise-linear maps), in float64 where ONNX Runtime has double kernels for every op of the model
(step 1e-6), else in float32 (step 1e-2, its rounding allowed for in :func:`sound`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from tests.helpers.onnx_oracle import runner, to_float64


def ort_function(model: onnx.ModelProto, input_name: str = "x") -> tuple[Callable[[np.ndarray], np.ndarray], bool]:
    """(x -> first output as float64, ran_in_float64) through an ONNX Runtime session."""
    for m, dtype in ((to_float64(model), np.float64), (model, np.float32)):
        try:
            run = runner(m, backend="ort")
        except Exception:  # noqa: BLE001 - no double kernel for some op: try float32
            continue

        def f(x: np.ndarray, _run: Callable = run, _dt: type = dtype) -> np.ndarray:
            return _run({input_name: x.astype(_dt)})[0].astype(np.float64).ravel()

        return f, dtype is np.float64
    raise RuntimeError("ONNX Runtime cannot run the model")


def lower_estimate(
    model: onnx.ModelProto,
    x_shape: Sequence[int],
    n_points: int = 3,
    seed: int = 0,
    input_name: str = "x",
    scales: Sequence[float] = (1.0, 3.0),
) -> tuple[float, bool]:
    """(largest secant ratio found, whether it was computed in float64). Never above the truth."""
    f, f64 = ort_function(model, input_name)
    h = 1e-6 if f64 else 1e-2
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in x_shape)
    n = int(np.prod(shape))
    best = 0.0
    for p in range(n_points):
        x = rng.standard_normal(n) * scales[p % len(scales)]
        cols = []
        for j in range(n):
            e = np.zeros(n)
            e[j] = h
            cols.append((f((x + e).reshape(shape)) - f((x - e).reshape(shape))) / (2 * h))
        jac = np.stack(cols, axis=1)
        if not np.all(np.isfinite(jac)) or jac.size == 0:
            continue
        _, _, vt = np.linalg.svd(jac, full_matrices=False)
        v = vt[0]
        diff = f((x + h * v).reshape(shape)) - f((x - h * v).reshape(shape))
        best = max(best, float(np.linalg.norm(diff) / (2 * h)))
    return best, f64


def sound(bound: float, low: float, f64: bool) -> bool:
    """``bound >= low`` up to the oracle's own rounding (float32 secants of step 1e-2: ~1e-5 relative)."""
    if f64:
        return bound >= low * (1 - 1e-7) - 1e-8
    return bound >= low * (1 - 1e-3) - 1e-4
