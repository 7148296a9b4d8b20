"""`--device auto|cpu|cuda`: the choice, float32 on the GPU, the DDP backend, and an export that does not
depend on the device. The CUDA comparison runs only where PyTorch sees a GPU (skipped here with a reason)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from lipgraph.errors import LipgraphError
from lipgraph.train.device import dist_backend, resolve_device
from lipgraph.train.loop import TrainConfig

HAS_CUDA = torch.cuda.is_available()


def test_auto_picks_cuda_only_when_pytorch_sees_a_gpu() -> None:
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(HAS_CUDA, reason="a GPU is visible: --device cuda is valid here")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(LipgraphError, match="--device cuda: PyTorch cannot use a GPU here"):
        resolve_device("cuda")


def test_unknown_device_is_refused() -> None:
    with pytest.raises(LipgraphError, match="unknown --device"):
        resolve_device("tpu")


def test_torchrun_ranks_take_their_local_gpu_and_nccl(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    dev = resolve_device("auto")
    assert (dev.type, dev.index) == ("cuda", 1)
    assert dist_backend(dev) == "nccl" and dist_backend(torch.device("cpu")) == "gloo"


def test_the_device_is_not_a_hyperparameter_of_the_exported_file() -> None:
    assert TrainConfig(device="cuda").hyperparameters() == TrainConfig(device="cpu").hyperparameters()


def test_cli_device_cuda_without_gpu_exits_2_with_one_line(tmp_path, capsys) -> None:
    if HAS_CUDA:
        pytest.skip("a GPU is visible: --device cuda is valid here")
    from lipgraph.cli import main

    rc = main(["train", "--device", "cuda", "--epochs", "1", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("lipgraph: error:") == 1 and "--device cuda" in err
    assert not (tmp_path / "m.onnx").exists()


def _train_export(device: str, tmp_path, method: str = "lmt") -> tuple[float, onnx.ModelProto]:
    from lipgraph.train.pipeline import run

    cfg = TrainConfig(arch="mlp", method=method, epochs=2, c=0.3, seed=0, device=device, log=lambda _s: None)
    out = str(tmp_path / f"{device}-{method}.onnx")
    res = run(cfg, "digits", out, legacy_exporter=True, certify_eps=None, limit_train=600)
    return float(res.analyzer_bound), onnx.load(out)


def test_cpu_device_trains_and_exports_like_the_default(tmp_path) -> None:
    if HAS_CUDA:
        pytest.skip("auto means CUDA here; the CUDA comparison below covers it")
    b_auto, m_auto = _train_export("auto", tmp_path)
    b_cpu, m_cpu = _train_export("cpu", tmp_path)
    assert b_auto == b_cpu
    assert m_auto.graph.SerializeToString() == m_cpu.graph.SerializeToString()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU visible to PyTorch (run bench/gpu_check.sh on one)")
@pytest.mark.parametrize("method", ["lmt", "groupsort"])
def test_cuda_and_cpu_training_export_the_same_model(tmp_path, method: str) -> None:
    b_cpu, m_cpu = _train_export("cpu", tmp_path, method)
    b_gpu, m_gpu = _train_export("cuda", tmp_path, method)
    assert abs(b_gpu - b_cpu) <= 1e-5 * max(1.0, b_cpu)
    assert [n.op_type for n in m_gpu.graph.node] == [n.op_type for n in m_cpu.graph.node]
    for a, b in zip(m_cpu.graph.initializer, m_gpu.graph.initializer, strict=True):
        wa, wb = onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)
        assert a.name == b.name and wa.shape == wb.shape
        np.testing.assert_allclose(wb, wa, rtol=1e-3, atol=1e-4)
