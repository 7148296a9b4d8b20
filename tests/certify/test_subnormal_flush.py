"""Flush-to-zero on the GPU path: the float error model must cover FTZ + DAZ arithmetic when certify runs CUDA.

No GPU runs here, so a numpy float32 emulation plays the GPU: every operand and every result below float32's
normal range (``tau = 2^-126``) is read or written as zero, which is what CUDA kernels built with flush-to-zero and
tensor-core paths that treat subnormal operands as zero do. The session certify opens is replaced by one that
reports the CUDA provider's name and computes its logits with that emulation; everything else (the bound, the float
error model, the radii, the local bounds) is lipgraph's own.

The net: ``y_0 = sum_i relu(A x_i)`` (``A = 2^24``), ``y_1 = c``. At ``x = s 1`` with the subnormal ``s = 2^-127``
the real ``y_0`` is ``n A s`` but the emulated GPU reads ``x`` as zero and gets ``y_0 = 0``: it predicts class 1
with the margin ``c = 1.9 n A s``. At ``x + s 1`` (distance ``s sqrt(n)``) the inputs are normal again and the GPU
predicts class 0. The model of gradual underflow certifies a larger radius than that; the flush model must not.
"""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import certify
from lipgraph.floaterr import float_error_model
from lipgraph.providers import CPU, CUDA
from tests.helpers.ftz import TAU, CudaSessionStub, ftz, gemm_ftz_daz

S = 2.0**-127
N = 16
A = 2.0**24
C = 1.9 * N * A * S


def _model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    w1 = (A * np.eye(N)).astype(np.float32)
    w2 = np.zeros((2, N), np.float32)
    w2[0] = 1.0
    b2 = np.array([0.0, C], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1"], ["z"], transB=1),
            helper.make_node("Relu", ["z"], ["h"]),
            helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], transB=1),
        ],
        "daz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, {"w1": w1, "w2": w2, "b2": b2}


def _emulated_logits(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = ftz(np.maximum(gemm_ftz_daz(x, weights["w1"], None), np.float32(0.0)))
    return gemm_ftz_daz(h, weights["w2"], weights["b2"])

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT", "device_id": "0"}, CPU: {}}

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        del outputs
        return [_emulated_logits(self.weights, next(iter(feeds.values())))]


@pytest.fixture
def emulated_gpu(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    from lipgraph import inference

    model, weights = _model()
    monkeypatch.setattr(
        inference.Runner, "_open", lambda self, names: CudaSessionStub(lambda x: _emulated_logits(weights, x))
    )
    weights["model"] = model  # type: ignore[assignment]
    return weights


def _flips_within(weights: dict[str, np.ndarray], x: np.ndarray, label: int, radius: float) -> bool:
    """Whether the emulated GPU predicts another class somewhere in a ball: along +-1 (where the subnormal
    inputs turn normal or the activations turn off) and at random directions, at a few fractions of ``radius``."""
    rng = np.random.default_rng(0)
    x = np.asarray(x, dtype=np.float64)
    dirs = [np.ones(N), -np.ones(N), -x / np.linalg.norm(x)]
    dirs += list(rng.standard_normal((64, N)))
    points = []
    for d in dirs:
        d = np.asarray(d, dtype=np.float64) / np.linalg.norm(d)
        for f in (0.25, 0.5, 0.8, 0.95, 0.999):
            p = (x.astype(np.float64) + f * radius * d).astype(np.float32)
            if np.linalg.norm(p.astype(np.float64) - x) < radius:
                points.append(p)
    preds = np.argmax(_emulated_logits(weights, np.stack(points)), axis=1)
    return bool(np.any(preds != label))


def test_the_emulation_is_float32_arithmetic_on_normal_numbers() -> None:
    """On inputs far from the subnormal range the emulation agrees with ONNX Runtime's CPU logits."""
    from tests.helpers.onnx_oracle import runner

    model, weights = _model()
    x = np.random.default_rng(1).uniform(-1e-3, 1e-3, (8, N)).astype(np.float32)
    ort = runner(model)({"x": x})[0]
    np.testing.assert_allclose(_emulated_logits(weights, x), ort, rtol=1e-6, atol=0)


@pytest.mark.parametrize("local", ["off", "auto"])
def test_flush_model_covers_daz_where_the_gradual_model_does_not(
    emulated_gpu: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch, local: str
) -> None:
    from lipgraph import providers

    weights, model = emulated_gpu, emulated_gpu["model"]
    x_sub = np.full((1, N), S, np.float32)
    x_normal = np.full((1, N), 1e-3, np.float32)
    x = np.concatenate([x_sub, x_normal])
    y = np.array([1, 0])
    # the attack is real: the emulated GPU predicts 1 at x_sub and 0 at x_sub + s 1, which is s sqrt(n) away
    assert int(np.argmax(_emulated_logits(weights, x_sub))) == 1
    flip = np.full((1, N), 2 * S, np.float32)
    assert int(np.argmax(_emulated_logits(weights, flip))) == 0
    dist = float(np.linalg.norm(flip.astype(np.float64) - x_sub))
    eps = [dist * f for f in (0.5, 1.01, 1.5, 2.0)]

    flush = certify(model, x, y, eps=eps, providers="cpu", local_bounds=local)
    assert flush.meta["provider"] == CUDA and flush.meta["float_error"]["subnormals"] == "flush"
    # no flip inside what the flush model certifies; the normal sample keeps a real radius (not vacuous)
    assert flush.radii[0] < dist
    assert flush.correct[1] and flush.radii[1] > 1e-4
    assert not _flips_within(weights, x_normal[0], 0, float(flush.radii[1]))

    # the model of gradual underflow (what certify used before for every provider) certifies the flip
    monkeypatch.setattr(providers, "subnormal_mode", lambda session: "gradual")
    gradual = certify(model, x, y, eps=eps, providers="cpu", local_bounds=local)
    assert gradual.meta["float_error"]["subnormals"] == "gradual"
    assert gradual.correct[0] and gradual.radii[0] > dist, "the crafted net no longer shows the DAZ hole"
    assert _flips_within(weights, x_sub[0], 1, float(gradual.radii[0]))
    # both models agree on the normal sample to far below any reported digit
    assert gradual.radii[1] == pytest.approx(flush.radii[1], rel=1e-9)


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_a_cuda_session_selects_the_flush_model(emulated_gpu: dict[str, np.ndarray], precision: str) -> None:
    """Any precision on CUDA: the float model charges FTZ + DAZ, and says so in meta.float_error."""
    x = np.full((3, N), 1e-3, np.float32)
    cert = certify(emulated_gpu["model"], x, np.zeros(3, int), eps=[1e-4], providers="cpu", precision=precision)
    assert cert.meta["provider"] == CUDA
    assert cert.meta["float_error"]["subnormals"] == "flush"


def test_the_cpu_provider_keeps_gradual_underflow() -> None:
    model, _ = _model()
    x = np.full((2, N), 1e-3, np.float32)
    cert = certify(model, x, np.zeros(2, int), eps=[1e-4], providers="cpu")
    assert cert.meta["provider"] == CPU and cert.meta["float_error"]["subnormals"] == "gradual"


def test_subnormal_mode_reads_the_session() -> None:
    """The CPU session lipgraph opens does not set denormals-as-zero; a session that does gets the flush model."""
    import onnxruntime as ort

    from lipgraph.providers import subnormal_mode

    model, _ = _model()
    plain = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    assert subnormal_mode(plain) == "gradual"
    so = ort.SessionOptions()
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    # created on a thread of its own: as the first session of a process, such a session sets FTZ + DAZ on the
    # thread that creates it for good, and every later certify there would refuse (test_review_flush.py)
    box: list = []
    worker = threading.Thread(
        target=lambda: box.append(ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=[CPU]))
    )
    worker.start()
    worker.join()
    assert subnormal_mode(box[0]) == "flush"


def test_flush_charges_the_operands_and_refuses_subnormal_constants() -> None:
    model, _ = _model()
    gradual = float_error_model(model, None, (1, N))
    flush = float_error_model(model, None, (1, N), subnormals="flush")
    # DAZ at the first Gemm: A tau sqrt(n), then through the second Gemm (factor sqrt(n)): >= n A tau
    assert flush.c >= gradual.c + N * A * float(TAU)
    assert flush.d == pytest.approx(gradual.d, rel=1e-12)
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    w2 = numpy_helper.to_array(bad.graph.initializer[1]).copy()
    w2[1, 0] = 2.0**-130
    bad.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2, "w2"))
    float_error_model(bad, None, (1, N))  # gradual underflow: a subnormal weight is just a small weight
    with pytest.raises(Exception, match="subnormal entries"):
        float_error_model(bad, None, (1, N), subnormals="flush")


@pytest.mark.parametrize("name", ["plain", "lmt", "awp", "groupsort"])
def test_ordinary_models_keep_their_float_bound_in_flush_mode(name: str) -> None:
    """Trained models (GroupSort included): the flush model runs through every op and adds ~1e-38, nothing visible."""
    from pathlib import Path

    model = onnx.load(Path(__file__).resolve().parents[2] / "sample_models" / f"{name}.onnx")
    shape = (1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:])
    gradual = float_error_model(model, None, shape)
    flush = float_error_model(model, None, shape, subnormals="flush")
    assert flush.describe()["subnormals"] == "flush" and gradual.describe()["subnormals"] == "gradual"
    assert gradual.c <= flush.c <= gradual.c * (1 + 1e-12) and flush.d == gradual.d


def test_radii_of_a_trained_model_are_the_same_under_the_flush_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole certificate (Lipschitz, per-pair and local radii) of a trained MLP: identical to 1e-12 relative."""
    from pathlib import Path

    from lipgraph import providers

    root = Path(__file__).resolve().parents[2] / "sample_models"
    data = np.load(root / "digits_test.npz")
    x, y = data["x"][:120], data["y"][:120]
    gradual = certify(str(root / "plain.onnx"), x, y, eps=[0.1, 0.3], providers="cpu", tight_pairs="off")
    monkeypatch.setattr(providers, "subnormal_mode", lambda session: "flush")
    flush = certify(str(root / "plain.onnx"), x, y, eps=[0.1, 0.3], providers="cpu", tight_pairs="off")
    assert gradual.meta["float_error"]["subnormals"] == "gradual" and flush.meta["float_error"]["subnormals"] == "flush"
    assert np.any(gradual.radii > 0)
    np.testing.assert_allclose(flush.radii, gradual.radii, rtol=1e-12, atol=0)
    assert flush.certified_accuracy == gradual.certified_accuracy
