"""Adversarial review of the flush-to-zero / denormals-are-zero float model (``subnormals="flush"``).

No GPU here: a numpy float32 emulation plays a kernel built with FTZ + DAZ (every operand and every result below
``tau = 2^-126`` read or written as zero), as in tests/certify/test_subnormal_flush.py. Crafted chains stress it
(tiny weights then huge ones, inputs at tau, cancellations down to subnormal partial sums, logits near float32's
maximum): the proven error bound must hold at the data against a float64 reference, and no point found inside a
certified radius may change the emulated prediction. Constants a kernel could read as zero must be refused however
they are written: initializers, folded subgraphs, Cast from double, Constant nodes, and float attributes (a
subnormal Gemm ``alpha`` silently dropped the product and let a radius 1000x too large through).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import certify
from lipgraph.errors import LipgraphError
from lipgraph.floaterr import float_error_model
from lipgraph.floaterr.chain_sample import chain_sample_bound
from lipgraph.providers import CPU, CUDA
from tests.helpers.ftz import TAU, CudaSessionStub, ftz, gemm_ftz_daz


def _emulate(ws: list[np.ndarray], bs: list[np.ndarray | None], x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, np.float32)
    for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = gemm_ftz_daz(h, w, b)
        if k < len(ws) - 1:
            h = ftz(np.maximum(h, np.float32(0.0)))
    return h


def _real(ws: list[np.ndarray], bs: list[np.ndarray | None], x: np.ndarray) -> np.ndarray:
    h = np.asarray(x, np.float64)
    for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = h @ w.astype(np.float64).T + (0.0 if b is None else b.astype(np.float64))
        if k < len(ws) - 1:
            h = np.maximum(h, 0.0)
    return h


def _chain_model(ws: list[np.ndarray], bs: list[np.ndarray | None]) -> onnx.ModelProto:
    nodes, inits, cur = [], [], "x"
    for k, (w, b) in enumerate(zip(ws, bs, strict=True)):
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        ins = [cur, f"w{k}"]
        if b is not None:
            inits.append(numpy_helper.from_array(b, f"b{k}"))
            ins.append(f"b{k}")
        nodes.append(helper.make_node("Gemm", ins, [f"z{k}"], transB=1))
        cur = f"z{k}"
        if k < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"h{k}"]))
            cur = f"h{k}"
    return _model(nodes, inits, ws[0].shape[1], cur, ws[-1].shape[0])


def _model(nodes: list, inits: list, n_in: int, out: str, n_out: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "crafted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT", "device_id": "0"}, CPU: {}}

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        del outputs
        return [self.fn(next(iter(feeds.values())))]


def _on_emulated_gpu(monkeypatch: pytest.MonkeyPatch, fn) -> None:  # noqa: ANN001
    from lipgraph import inference

    monkeypatch.setattr(inference.Runner, "_open", lambda self, names: CudaSessionStub(fn))


def _cases() -> dict[str, tuple[list[np.ndarray], list[np.ndarray | None], np.ndarray]]:
    rng = np.random.default_rng(0)
    n = 8
    out = {}
    # activations of the first layer around tau (tiny normal weights), then a gain of 2^120
    w1 = rng.standard_normal((12, n)) * 2.0**-128
    w1 = np.where(np.abs(w1) < TAU, np.sign(w1) * TAU * 1.5, w1).astype(np.float32)
    w2 = (rng.standard_normal((3, 12)) * 2.0**120).astype(np.float32)
    out["tiny_then_huge"] = ([w1, w2], [None, np.array([1e3, 0, -1e3], np.float32)], rng.uniform(0, 1, (20, n)))
    # inputs at tau: half, just below, at, just above and twice it, either sign; a gain of 2^20
    w1 = (rng.standard_normal((10, n)) * 2.0**20).astype(np.float32)
    w2 = rng.standard_normal((3, 10)).astype(np.float32)
    xb = rng.choice([0.5, 0.99, 1.0, 1.01, 2.0], (20, n)) * float(TAU) * rng.choice([-1, 1], (20, n))
    out["inputs_at_tau"] = ([w1, w2], [None, (np.array([4.0, 0.0, -4.0]) * 2.0**-98).astype(np.float32)], xb)
    # logits near float32's maximum
    w1 = rng.standard_normal((10, n)).astype(np.float32)
    w2 = (rng.standard_normal((3, 10)) * 1e37).astype(np.float32)
    out["huge_logits"] = ([w1, w2], [None, None], rng.uniform(0, 1, (20, n)))
    # +x and -x at 2^-100 then 2^110: partial sums cancel into the subnormal range
    w1 = (np.concatenate([np.eye(n), -np.eye(n)]) * 2.0**-100).astype(np.float32)
    w2 = (rng.standard_normal((3, 2 * n)) * 2.0**110).astype(np.float32)
    out["cancel_tiny"] = ([w1, w2], [None, None], rng.uniform(0, 1, (20, n)) * 2.0**-20)
    return {k: (ws, bs, np.asarray(x, np.float32)) for k, (ws, bs, x) in out.items()}


def _flips(ws, bs, x: np.ndarray, label: int, radius: float, rng: np.random.Generator) -> int:  # noqa: ANN001
    """Points within ``radius`` of ``x`` (float32, checked in float64) where the emulation predicts another class:
    random directions, +-1, towards 0, and each entry moved to +-tau or 0 (where DAZ / FTZ switch)."""
    x64 = x.astype(np.float64)
    dirs = [np.ones(x.size), -np.ones(x.size), -x64] + list(rng.standard_normal((48, x.size)))
    pts = [
        (x64 + f * radius * d / max(np.linalg.norm(d), 1e-300)).astype(np.float32)
        for d in dirs
        for f in (0.1, 0.5, 0.9, 0.999)
    ]
    for i in range(x.size):
        for v in (TAU, -TAU, np.float32(0.0)):
            p = x.copy()
            p[i] = v
            pts.append(p)
    pts_a = np.stack(pts)
    pts_a = pts_a[np.linalg.norm(pts_a.astype(np.float64) - x64, axis=1) < radius]
    return int(np.sum(np.argmax(_emulate(ws, bs, pts_a), axis=1) != label)) if len(pts_a) else 0


@pytest.mark.parametrize("name", ["tiny_then_huge", "inputs_at_tau", "huge_logits", "cancel_tiny"])
def test_crafted_chains_keep_the_flush_bound_and_their_radii(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, bs, x = _cases()[name]
    model = _chain_model(ws, bs)
    n = x.shape[1]
    # the proven bound against float64, at the data and at rescaled points (both bounds: the walk's, the chain's)
    pts = np.concatenate([x, (x * np.random.default_rng(1).uniform(0.5, 1.5, x.shape)).astype(np.float32)])
    err = np.linalg.norm(_emulate(ws, bs, pts).astype(np.float64) - _real(ws, bs, pts), axis=1)
    walk = float_error_model(model, None, (1, n), subnormals="flush")
    assert np.all(err <= walk.at(np.linalg.norm(pts.astype(np.float64), axis=1))), name
    chain, why = chain_sample_bound(
        model, None, (1, n), model.graph.output[0].name, pts, 2.0**-24, 0.0, subnormals="flush"
    )
    assert chain is not None, why
    assert np.all(err <= chain.e) and np.all(err <= chain.e_x), name
    # the certificate on the emulated GPU: no flip found inside any radius
    _on_emulated_gpu(monkeypatch, lambda v: _emulate(ws, bs, v))
    y = np.argmax(_real(ws, bs, x), axis=1)
    cert = certify(
        model, x, y, eps=[float(v) for v in 10.0 ** np.arange(-45, 0, 1.0)], providers="cpu", tight_pairs="off"
    )
    assert cert.meta["float_error"]["subnormals"] == "flush"
    rng = np.random.default_rng(2)
    for i in np.flatnonzero(cert.correct & (cert.radii > 0)):
        assert not _flips(ws, bs, x[i], int(y[i]), float(cert.radii[i]), rng), (name, i, cert.radii[i])
    if name == "inputs_at_tau":  # not vacuous: local radii at the scale of tau
        assert np.all(cert.radii > 1e-37) and cert.meta["local_bounds"]["samples_from_local"] > 0


def _alpha_model(alpha: float) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray, np.ndarray]:
    """``y = Gemm(x, W1, alpha) + Gemm(x, W2, b)`` with ``alpha W1 = 2^-4 M`` and ``W2 = -2^-4 (1 - 2^-10) M``:
    the real net nearly cancels (Lipschitz 2^-14), a kernel that reads alpha as zero keeps only W2 (2^-4)."""
    m = np.array([[1.0, 0.0], [0.0, 0.0]])
    w1 = (m * 2.0**126).astype(np.float32)
    w2 = (-m * 2.0**-4 * (1 - 2.0**-10)).astype(np.float32)
    b = np.array([2.0**-20, 0.0], np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["y1"], transB=1, alpha=alpha),
        helper.make_node("Gemm", ["x", "w2", "b"], ["y2"], transB=1),
        helper.make_node("Add", ["y1", "y2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b, "b")]
    return _model(nodes, inits, 2, "y", 2), w1, w2, b


def test_a_subnormal_gemm_alpha_is_refused_under_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    alpha = float(np.float32(2.0**-130))
    model, w1, w2, b = _alpha_model(alpha)

    def daz(x: np.ndarray) -> np.ndarray:  # alpha read as zero
        x = np.asarray(x, np.float32)
        return (np.float32(0.0) * (x @ w1.T) + (x @ w2.T + b)).astype(np.float32)

    # the attack is real: the DAZ kernel predicts class 1 at 1.5e-5 from x = 0, where the real net keeps class 0
    # far beyond (the flush model without this check certified a radius of 0.0156 here)
    flip = np.array([[2.0**-20 * 16 * 1.01, 0.0]], np.float32)
    assert int(np.argmax(daz(flip))) == 1 and int(np.argmax(daz(np.zeros((1, 2), np.float32)))) == 0
    real = alpha * (flip.astype(np.float64) @ w1.T.astype(np.float64)) + flip @ w2.T.astype(np.float64) + b
    assert int(np.argmax(real)) == 0
    float_error_model(model, None, (1, 2))  # gradual underflow: a subnormal alpha is just a small factor
    with pytest.raises(LipgraphError, match="attribute 'alpha'"):
        float_error_model(model, None, (1, 2), subnormals="flush")
    _on_emulated_gpu(monkeypatch, daz)
    with pytest.raises(LipgraphError, match="subnormal"):
        certify(model, np.zeros((1, 2), np.float32), np.array([0]), eps=[1e-5, 1e-3], providers="cpu")
    # a normal alpha keeps the flush model
    float_error_model(_alpha_model(float(np.float32(2.0**-126)))[0], None, (1, 2), subnormals="flush")


def test_a_subnormal_leaky_relu_slope_is_refused_under_flush() -> None:
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["z"], transB=1),
        helper.make_node("LeakyRelu", ["z"], ["y"], alpha=float(np.float32(1e-40))),
    ]
    model = _model(nodes, [numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")], 3, "y", 3)
    float_error_model(model, None, (1, 3))
    with pytest.raises(LipgraphError, match="attribute 'alpha'"):
        float_error_model(model, None, (1, 3), subnormals="flush")


def _const_model(extra: list, inits: dict[str, np.ndarray], add_in: str) -> onnx.ModelProto:
    nodes = [
        *extra,
        helper.make_node("Gemm", ["x", "w"], ["z"], transB=1),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("Add", ["h", add_in], ["y"]),
    ]
    all_inits = {"w": np.eye(4, dtype=np.float32), **inits}
    return _model(nodes, [numpy_helper.from_array(v, k) for k, v in all_inits.items()], 4, "y", 4)


@pytest.mark.parametrize("how", ["initializer", "folded_mul", "cast_from_double", "constant_node"])
def test_subnormal_constants_are_refused_however_they_are_written(how: str) -> None:
    tiny70 = np.full(4, 2.0**-70, np.float32)
    model = {
        "initializer": lambda: _const_model([], {"c": np.full(4, 2.0**-130, np.float32)}, "c"),
        "folded_mul": lambda: _const_model(
            [helper.make_node("Mul", ["a", "b"], ["c"])], {"a": tiny70, "b": tiny70}, "c"
        ),
        "cast_from_double": lambda: _const_model(
            [helper.make_node("Cast", ["a"], ["c"], to=TensorProto.FLOAT)], {"a": np.full(4, 1e-40)}, "c"
        ),
        "constant_node": lambda: _const_model(
            [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full(4, 2.0**-140, np.float32)))],
            {},
            "c",
        ),
    }[how]()
    x = np.ones((2, 4), np.float32)
    float_error_model(model, None, (1, 4))
    assert chain_sample_bound(model, None, (1, 4), "y", x, 2.0**-24, 0.0)[0] is not None
    with pytest.raises(LipgraphError, match="subnormal"):
        float_error_model(model, None, (1, 4), subnormals="flush")
    bound, why = chain_sample_bound(model, None, (1, 4), "y", x, 2.0**-24, 0.0, subnormals="flush")
    assert bound is None and "subnormal" in why


_THREAD_SCRIPT = """
import numpy as np, onnxruntime as ort
from lipgraph.certify import certify
from lipgraph.errors import LipgraphError
from lipgraph.providers import subnormal_mode, thread_flushes_subnormals
from tests.certify.test_subnormal_flush import N, S, _model
model, _ = _model()
so = ort.SessionOptions()
so.add_session_config_entry("session.set_denormal_as_zero", "1")
ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
y0 = float(plain.run(None, {"x": np.full((1, N), S, np.float32)})[0][0, 0])
try:
    certify(model, np.full((1, N), S, np.float32), np.array([1]), eps=[2.0**-126, 2.0**-125], providers="cpu")
    refusal = ""
except LipgraphError as exc:
    refusal = str(exc)
print(repr((y0, thread_flushes_subnormals(), subnormal_mode(plain), refusal)))
"""


def test_a_thread_left_flushing_by_the_first_session_is_refused() -> None:
    """Real ONNX Runtime, CPU provider, no emulation, in a fresh process. When the first session a process creates
    sets ``session.set_denormal_as_zero``, FTZ + DAZ stay on the creating thread for good (ONNX Runtime 1.32): a
    later plain CPU session reads the subnormal input ``x = 2^-127 1`` as zero (``y_0 = 0`` instead of
    ``2^-99``) and predicts class 1 with margin ``C``, while ``2^-126 1``, ``2^-125`` away, is class 0 in any mode.
    Its own options say nothing of it, so certify used the gradual model and certified a radius of 4.5e-38 there.
    It must refuse instead (its own float64 analysis would read subnormals as zero too)."""
    import ast
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("onnxruntime")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run(
        [sys.executable, "-c", _THREAD_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    y0, flushes, mode, refusal = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert y0 == 0.0, "this ONNX Runtime no longer leaves the thread flushing: the case shows nothing"
    assert flushes and mode == "flush"
    assert "flushes subnormal" in refusal
