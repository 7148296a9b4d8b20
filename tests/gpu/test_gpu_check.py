"""bench/gpu_check.py, the python part of bench/gpu_check.sh, rehearsed on the CPU (--dry-run): every step
runs and reports, a failing step does not stop the others, and without CUDA nothing is measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.TRAINED.clear()
    return mod


def test_without_cuda_nothing_is_measured_or_written(gpu_check, tmp_path, capsys) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the real check runs instead")
    assert gpu_check.main(["--out", str(tmp_path)]) == 0  # under bench/run_all.py: nothing to do, not a failure
    assert gpu_check.main(["--out", str(tmp_path), "--require-cuda"]) == 1  # under bench/gpu_check.sh: a failure
    assert "nothing measured" in capsys.readouterr().out
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_failing_step_is_reported_and_the_rest_still_run(gpu_check, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("torch")

    def broken(*_a, **_k):
        raise RuntimeError("CUDA failure 100: no CUDA-capable device")

    monkeypatch.setattr(gpu_check, "compare_certificates", broken)
    monkeypatch.setattr(gpu_check, "train_on_device", broken)
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 1
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {r["step"]: r["status"] for r in rep["steps"]}
    assert status == {"environment": "ok", "certify": "ERROR", "train": "ERROR", "attack": "ERROR", "throughput": "ok"}
    assert "no CUDA-capable device" in next(r["error"] for r in rep["steps"] if r["step"] == "certify")
    out = capsys.readouterr().out
    assert "== throughput" in out and "ERROR" in out


@pytest.mark.slow
def test_dry_run_passes_every_step(gpu_check, tmp_path) -> None:
    pytest.importorskip("torch")
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rep["dry_run"] is True and set(rep["summary"].values()) == {"ok"}
    steps = {r["step"]: r for r in rep["steps"]}
    assert steps["certify"]["worst_rel_logit_dev"] == 0.0  # CPU against CPU: identical logits
    assert steps["attack"]["flips_inside"] == 0 and steps["attack"]["flips_at_3x"] > 0
