"""`lipgraph certify --format json` on stdout stays parseable when the CUDA provider prints banners.

A real process (subprocess), so that the C-level stdout (fd 1) is the one a user's shell would read: the
fake CUDA provider writes its "EP Error" banner both with print() and with os.write(1, ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.gpu.test_providers import mlp

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import lipgraph.providers
from tests.gpu.fake_ort import FakeOrt
lipgraph.providers.ort_module = lambda fake=FakeOrt(sys.argv[1]): fake
from lipgraph.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    "mode, providers, code", [("create_fails", "auto", 0), ("create_fails", "cuda", 2), ("works", "auto", 0)]
)
def test_json_on_stdout_survives_cuda_banners(tmp_path, mode: str, providers: str, code: int) -> None:
    onnx.save(mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).uniform(-1, 1, (9, 6)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            mode,
            "certify",
            str(tmp_path / "m.onnx"),
            "--data",
            str(tmp_path / "d.npz"),
            "--providers",
            providers,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert "EP Error" not in proc.stdout and "banner" not in proc.stdout
    if code == 2:
        assert proc.stdout == ""
        assert "CUDA was asked for but cannot be used" in proc.stderr
        return
    report = json.loads(proc.stdout)
    expect = "CUDAExecutionProvider" if mode == "works" else "CPUExecutionProvider"
    assert report["meta"]["provider"] == expect
    assert report["meta"]["precision"] == "fp32"
    if mode == "create_fails":
        assert "EP Error" in proc.stderr  # moved, not lost
    if mode != "works":
        assert sum("CUDA is not usable" in w for w in report["warnings"]) == 1
