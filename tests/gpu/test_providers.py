"""Provider handling with the real CPU runtime and a scripted CUDA provider (tests/gpu/fake_ort.py).

The certificate must name the provider that computed every logit, never certify on CUDA with TF32 on
unless the float allowance covers it, keep stdout clean, and refuse an explicit CUDA request it cannot meet.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import MARGIN_REL, certify, compute_radii
from lipgraph.errors import LipgraphError
from lipgraph.providers import CPU, CUDA, parse_providers
from tests.gpu.fake_ort import FakeOrt, install, tf32_like


def mlp(seed: int = 0, d: int = 6, k: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(12, d)) / math.sqrt(d), rng.normal(size=(k, 12))
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(w1.astype(np.float32), "w1"), numpy_helper.from_array(w2.astype(np.float32), "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def cpu_logits(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString(), providers=[CPU]).run(None, {"x": x})[0].astype(np.float64)


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, size=(40, 6)).astype(np.float32)


def test_real_cpu_runtime_auto_is_cpu_without_warning(data: np.ndarray) -> None:
    assert parse_providers(None).auto and parse_providers("auto").names[-1] == CPU
    cert = certify(mlp(), data, eps=[0.1])  # auto by default
    assert (cert.meta["provider"], cert.meta["device"], cert.meta["precision"]) == (CPU, None, "fp32")
    assert cert.meta["providers_used"] == [CPU]
    assert not any("CUDA" in w for w in cert.warnings)


def test_explicit_cuda_on_a_cpu_runtime_is_a_clear_error(data: np.ndarray) -> None:
    with pytest.raises(LipgraphError, match="CUDA was asked for.*--providers auto"):
        certify(mlp(), data, providers="cuda,cpu")


def test_cuda_that_works_runs_float32_with_the_fixed_conv_algorithm(monkeypatch, data) -> None:
    fake = install(monkeypatch, FakeOrt("works"))
    cert = certify(mlp(), data, eps=[0.1], batch_size=7)
    assert cert.meta["provider"] == CUDA and cert.meta["precision"] == "fp32"
    assert cert.meta["device"].startswith("cuda:0")
    assert fake.cuda_options == {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT"}
    assert fake.preloaded and fake.fallback_disabled and fake.kwargs.get("enable_fallback") == 0
    assert not cert.warnings or not any("CUDA" in w for w in cert.warnings)
    assert fake.cuda_runs == 1 + math.ceil(len(data) / 7)  # the one-sample probe, then the batches


@pytest.mark.parametrize(
    "mode, why",
    [
        ("create_fails", "could not create a CUDA session"),
        ("silent", "without CUDA"),
        ("old_ort", "use_tf32"),
        ("conv_search", "cudnn_conv_algo_search"),
    ],
)
def test_auto_falls_back_to_cpu_with_one_warning(monkeypatch, capfd, data, mode: str, why: str) -> None:
    install(monkeypatch, FakeOrt(mode))
    m = mlp()
    cert = certify(m, data, eps=[0.1])
    assert cert.meta["provider"] == CPU and cert.meta["device"] is None and cert.meta["precision"] == "fp32"
    cuda_warnings = [w for w in cert.warnings if "CUDA" in w]
    assert len(cuda_warnings) == 1 and why in cuda_warnings[0] and "running on the CPU" in cuda_warnings[0]
    np.testing.assert_array_equal(cert.predictions, cpu_logits(m, data).argmax(1))
    out, _err = capfd.readouterr()
    assert out == ""  # banners (Python print and fd 1) went to stderr


@pytest.mark.parametrize("mode", ["create_fails", "silent", "old_ort", "conv_search", "run_fails"])
def test_explicit_cuda_that_fails_is_an_error(monkeypatch, data, mode: str) -> None:
    install(monkeypatch, FakeOrt(mode, fail_after=2))
    with pytest.raises(LipgraphError, match="CUDA was asked for but cannot be used"):
        certify(mlp(), data, providers="cuda", batch_size=8)


def test_cuda_failing_mid_run_reruns_everything_on_the_cpu(monkeypatch, data) -> None:
    """After two good CUDA batches the third fails: no logit of the report may come from CUDA's session
    while meta says CPU, or the reverse; all are recomputed on the CPU."""
    fake = install(monkeypatch, FakeOrt("run_fails", fail_after=3))
    m = mlp()
    cert = certify(m, data, eps=[0.1], batch_size=8)
    assert fake.cuda_runs == 4  # probe + 2 batches succeeded, the 3rd batch failed
    assert cert.meta["provider"] == CPU and cert.meta["providers_used"] == [CPU]
    assert any("a CUDA run failed" in w and "illegal memory access" in w for w in cert.warnings)
    ref = certify(m, data, eps=[0.1], providers="cpu")
    np.testing.assert_array_equal(cert.radii, ref.radii)


def test_cli_explicit_cuda_failure_exits_2_with_one_line(monkeypatch, capsys, tmp_path, data) -> None:
    from lipgraph.cli import main

    install(monkeypatch, FakeOrt("create_fails"))
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=data)
    rc = main(
        [
            "certify",
            str(tmp_path / "m.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "--providers",
            "cuda",
            "--format",
            "json",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("lipgraph:")]
    assert len(lines) == 1 and "CUDA was asked for but cannot be used" in lines[0]


# ------------------------------------------------------------------------------------ TF32 error model
def test_tf32_error_breaks_the_old_allowance(monkeypatch) -> None:
    """A ~1e-3 relative logit error (TF32) inflates margins beyond the old 1e-5 * max|logit| allowance: radii
    from TF32 logits exceed what the float32 network's own margins allow, i.e. the old allowance is unsound."""
    m = mlp(seed=3)
    x = np.random.default_rng(4).uniform(-1, 1, size=(200, 6)).astype(np.float32)
    exact = cpu_logits(m, x)
    lip = 5.0  # any L: radii scale with 1/L, the comparison does not depend on it
    true_r = compute_radii(exact, None, lip).radius
    tf32_r = compute_radii(tf32_like(exact.astype(np.float32), 1e-3).astype(np.float64), None, lip).radius
    # the largest radius the real margin supports (no allowance at all) is still below the TF32 radius
    srt = np.sort(exact, axis=1)
    upper = (srt[:, -1] - srt[:, -2]) / (math.sqrt(2) * lip)
    assert np.sum(tf32_r > upper) > 0.9 * len(x)
    assert np.all(tf32_r >= true_r)
    assert 10 * MARGIN_REL < 1e-3  # the allowance is two orders of magnitude too small for TF32


def test_tf32_is_off_by_default_and_allow_tf32_is_refused_or_covered(monkeypatch, data) -> None:
    fake = install(monkeypatch, FakeOrt("works", tf32_rel=1e-3))
    m = mlp()
    cert = certify(m, data, eps=[0.1])
    assert fake.cuda_options["use_tf32"] == "0" and cert.meta["precision"] == "fp32"
    ref = certify(m, data, eps=[0.1], providers="cpu")
    np.testing.assert_array_equal(cert.radii, ref.radii)  # TF32 off: the fake CUDA adds no error
    try:
        from lipgraph.floaterr import TF32_UNIT_ROUNDOFF  # noqa: F401 - the derived float error bound
    except ImportError:
        with pytest.raises(LipgraphError, match="not covered by the float allowance"):
            certify(m, data, eps=[0.1], precision="tf32")
        return
    # with a float error model that takes TF32's operand roundoff, TF32 radii must stay sound:
    # (last-layer radii: exact_radii knows nothing of the per-pair network bounds or the per-sample local bounds,
    # which may be larger)
    cert = certify(m, data, eps=[0.1], precision="tf32", tight_pairs="off", local_bounds="off")
    assert cert.meta["precision"] == "tf32" and fake.cuda_options["use_tf32"] == "1"
    assert cert.meta["float_error"]["dot_operand_roundoff"] >= 2.0**-11
    assert np.all(cert.radii <= exact_radii(monkeypatch, m, data) * (1 + 1e-9))


def exact_radii(monkeypatch, m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The radii the float32 CPU logits support with NO float allowance at all (global or pairwise, as
    certify chooses): an upper limit for any sound radius computed from other arithmetic."""
    import importlib

    from lipgraph.analyze import analyze
    from lipgraph.tail import find_tail

    a = analyze(m, input_shape=(1, *x.shape[1:]))
    tails = find_tail(a.graph, a.logits_name, a.tensor_bounds)
    # the package re-exports the function certify(), so fetch the module itself
    monkeypatch.setattr(importlib.import_module("lipgraph.certify"), "MARGIN_REL", 0.0)
    return compute_radii(cpu_logits(m, x), None, float(a.bound), tails).radius


def test_unknown_precision_and_reduced_precision_providers_are_refused(data) -> None:
    with pytest.raises(LipgraphError, match="unknown precision"):
        certify(mlp(), data, precision="fp16")
    with pytest.raises(LipgraphError, match="auto cannot be combined"):
        parse_providers("auto,cpu")


def test_cli_allow_tf32_is_refused_in_one_line_or_accepted_with_the_tf32_bound(capsys, tmp_path, data) -> None:
    from lipgraph.cli import main

    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=data)
    args = ["certify", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--format", "json"]
    rc = main([*args, "--allow-tf32"])
    out, err = capsys.readouterr()
    try:
        from lipgraph.floaterr import TF32_UNIT_ROUNDOFF  # noqa: F401
    except ImportError:
        assert rc == 2 and out == "" and err.count("lipgraph: error:") == 1 and "not covered" in err
        return
    assert rc == 0 and '"precision": "fp32"' in out  # no CUDA here: the CPU ran, in float32
