"""Determinism: the same model gives the bit-identical bound (and per-node JSON) run after run,
in one process and across fresh processes.

The models cover the paths that could drift: exact SVDs, the Conv dense path, the Conv circulant
path with chunked DFT products and its power-iteration lower estimate, pooling, BN folding and the
MaxMin pass. Only timings (``meta.time_*``) may differ between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph import analyze
from lipgraph.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _models() -> dict[str, onnx.ModelProto]:
    r = np.random.default_rng(7)

    def w(*s: int) -> np.ndarray:
        return (r.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)

    def model(nodes: list[onnx.NodeProto], x_shape: list, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
        g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        return m

    small_cnn = model([
        helper.make_node("Conv", ["x", "k1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    ], ["N", 3, 9, 9], {"k1": w(6, 3, 3, 3), "s": w(6), "b": w(6), "m": w(6), "v": np.abs(w(6)) + 0.5,
                        "wf": w(10, 6 * 4 * 4)})
    # Large enough for the circulant path (dense cost over budget) and its power-iteration lower estimate.
    big_conv = model([
        helper.make_node("Conv", ["x", "k"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Split", ["c", "sp"], ["a", "b"], name="split", axis=1),
        helper.make_node("Max", ["a", "b"], ["mx"], name="max"),
        helper.make_node("Min", ["a", "b"], ["mn"], name="min"),
        helper.make_node("Concat", ["mx", "mn"], ["g"], name="cat", axis=1),
        helper.make_node("GlobalAveragePool", ["g"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "wf"], ["y"], name="fc"),
    ], ["N", 16, 48, 48], {"k": w(32, 16, 3, 3), "sp": np.array([16, 16], np.int64), "wf": w(32, 10)})
    return {"small_cnn": small_cnn, "big_conv": big_conv}


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("det")
    out = {}
    for name, m in _models().items():
        p = folder / f"{name}.onnx"
        p.write_bytes(m.SerializeToString())
        out[name] = p
    return out


def _stable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without timings."""
    rep = json.loads(json.dumps(report))
    rep["meta"] = {k: v for k, v in rep["meta"].items() if not k.startswith("time")}
    return rep


@pytest.mark.parametrize("name", ["small_cnn", "big_conv"])
def test_in_process_bit_identical(name: str, model_paths: dict[str, Path]) -> None:
    runs = [analyze(model_paths[name]) for _ in range(3)]
    bounds = {a.bound.hex() for a in runs}
    assert len(bounds) == 1, bounds
    reports = [_stable(a.to_json()) for a in runs]
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["nodes"], "no per-node rows to compare"
    if name == "big_conv":  # the path under test is really taken
        methods = " ".join(n["method"] for n in reports[0]["nodes"])
        assert "circulant" in methods or "LMT" in methods, methods


def test_cli_json_identical_in_process(model_paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for _ in range(2):
        capsys.readouterr()
        assert main(["bound", str(model_paths["small_cnn"]), "--format", "json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["lipschitz_bound"].hex() == outs[1]["lipschitz_bound"].hex()
    assert _stable(outs[0]) == _stable(outs[1])


def _subprocess_report(path: Path, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(extra_env or {}))
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "bound", str(path), "--format", "json"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["small_cnn", "big_conv"])
def test_across_processes_bit_identical(name: str, model_paths: dict[str, Path]) -> None:
    """Two fresh interpreters agree to the last bit on everything but timings (JSON floats are
    written with repr, so the round trip keeps every bit), and so does the API in this process
    when it runs BLAS with the CLI's one thread."""
    from threadpoolctl import threadpool_limits

    a, b = _subprocess_report(model_paths[name]), _subprocess_report(model_paths[name])
    assert a["lipschitz_bound"].hex() == b["lipschitz_bound"].hex()
    assert _stable(a) == _stable(b)
    with threadpool_limits(1):
        here = analyze(model_paths[name])
    assert here.bound.hex() == a["lipschitz_bound"].hex()
    assert _stable(here.to_json())["nodes"] == _stable(a)["nodes"]


def test_blas_threads_change_only_last_bits(model_paths: dict[str, Path]) -> None:
    """Bit-identity holds for a fixed BLAS thread count. Multithreaded BLAS sums in another order, so
    with other thread counts the SVDs (and the bound) may move by a few ulps -- each result is
    still a sound bound (the SVD rounding allowance of SPEC sec. 7 covers such differences)."""
    from threadpoolctl import threadpool_limits

    for path in model_paths.values():
        with threadpool_limits(1):
            one = analyze(path).bound
        with threadpool_limits(2):
            two = analyze(path).bound
        assert abs(one - two) <= 1e-12 * one, (one.hex(), two.hex())
