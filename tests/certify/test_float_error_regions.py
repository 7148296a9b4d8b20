"""The float error walk through fused regions: earlier errors grow by the region's own factor (a
residual sandwich's 1), not by the product of its ops' generic factors (about 3 per block).

Oracle: ONNX Runtime's float32 logits against a float64 evaluation of the same graph, on inputs
with large offsets and on adversarially scaled ones; the bound must hold for every sample, and it
must be tighter than the walk that ignores the regions.
"""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.analyze import analyze
from lipgraph.floaterr import float_error_model
from lipgraph.floaterr import walk as walk_mod
from tests.certify.float_nets import run_float64

torch = pytest.importorskip("torch")

from tests.families import cpl, export_onnx, sll  # noqa: E402 - needs torch


def _ort(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).astype(np.float64)


def _inputs(shape: tuple[int, ...], n: int = 48) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, *shape[1:]))
    x[: n // 3] *= 100.0  # large inputs: the error term that grows with ||x|| matters
    x[n // 3 : 2 * n // 3] += 30.0  # offsets that cancel badly inside a residual block
    return x.astype(np.float32)


@pytest.mark.parametrize(
    "family_model",
    [m for m in cpl.MODELS + sll.MODELS if not m.slow],
    ids=lambda m: m.key,
)
def test_region_bound_covers_onnx_runtime_and_is_tighter(family_model, monkeypatch) -> None:
    net = family_model.build()
    proto = export_onnx(net, family_model.input_shape, dynamo=False)
    shape = family_model.input_shape
    an = analyze(proto, input_shape=shape)
    assert any(n.op_type in ("ResidualSandwich", "Sandwich") for n in an.graph.nodes)  # there is a region
    x = _inputs(shape)
    err = np.linalg.norm(_ort(proto, x) - run_float64(proto, x), axis=1)
    norms = np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)
    with_regions = float_error_model(proto, None, shape, analysis=an)
    assert np.all(err <= with_regions.at(norms)), (err.max(), with_regions.at(norms).max())
    monkeypatch.setattr(walk_mod, "_fused_regions", lambda *_a: {})
    without = float_error_model(proto, None, shape, analysis=an)
    assert np.all(with_regions.at(norms) <= without.at(norms))
    assert with_regions.c + with_regions.d < without.c + without.d
