"""Shared pieces of the bad-input corpus: run the real CLI, check the one-line refusal contract.

The contract (DESIGN.md, "The command line"): a bad model, bad data or a bad flag gives exit code 2,
exactly one line on stderr that starts with ``lipgraph: error:`` (never ``internal error``), no
traceback, and no report file -- nor a temp file beside it -- left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    rc: int
    out: str
    err: str


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """``lipgraph.cli.main(argv)`` in-process, with what it wrote to stdout and stderr."""
    from lipgraph.cli import main

    capsys.readouterr()  # drop anything printed before
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return Result(rc, cap.out, cap.err)


def run_subprocess(argv: list[str], cwd: Path, timeout: float = 120) -> Result:
    """``python -m lipgraph argv`` in a fresh interpreter (the entry point users and CI call)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "lipgraph", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


# One line per refused node under the header of an UnsupportedModelError (the walker lists every
# node it cannot bound, so that one run names them all): ``domain:Op@opset node: reason``.
_REFUSAL_LINE = re.compile(r"^[\w.]+:\w+@\d+ \S.*: \S.*$")


def assert_refused(res: Result, *words: str, output: Path | None = None, node_list: bool = False) -> str:
    """Exit 2, exactly one ``lipgraph: error:`` line on stderr naming ``words``, no traceback, no report.

    With ``node_list``, the error is the walker's list of unsupported nodes: the one error line is
    followed by one ``domain:Op@opset node: reason`` line per node and nothing else.
    """
    assert res.rc == 2, (res.rc, res.err)
    lines = res.err.splitlines()
    if node_list:
        assert len(lines) >= 2, res.err
        assert lines[0].endswith("without a sound Lipschitz bound:"), res.err
        assert all(_REFUSAL_LINE.match(ln) for ln in lines[1:]), res.err
        res = Result(res.rc, res.out, " ".join(lines))
        lines = [res.err]
    assert len(lines) == 1, res.err
    line = lines[0]
    assert line.startswith("lipgraph: error:"), line
    assert "internal error" not in line and "Traceback" not in res.err, line
    low = line.lower()
    for w in words:
        assert w.lower() in low, (w, line)
    if output is not None:
        assert_no_report(output)
    return line


def assert_no_report(output: Path) -> None:
    """Neither the report nor a temp file of write_atomic (``.NAME.*.tmp``) exists in its folder."""
    assert not output.exists(), output
    if output.parent.is_dir():
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
        assert not leftovers, leftovers


# ---------------------------------------------------------------------------- small valid inputs
def mlp_model(n_in: int = 4, n_hidden: int = 6, n_classes: int = 3, seed: int = 0,
              elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm, input (N, n_in), logits (N, n_classes)."""
    rng = np.random.default_rng(seed)
    dt = np.float64 if elem_type == TensorProto.DOUBLE else np.float32
    w1 = rng.standard_normal((n_hidden, n_in)).astype(dt)
    b1 = rng.standard_normal(n_hidden).astype(dt)
    w2 = rng.standard_normal((n_classes, n_hidden)).astype(dt)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", elem_type, ["N", n_in])],
        [helper.make_tensor_value_info("logits", elem_type, ["N", n_classes])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def data_npz(path: Path, n: int = 20, n_in: int = 4, n_classes: int = 3, seed: int = 1, **arrays: object) -> Path:
    """An .npz with ``x`` (n, n_in) float32 and ``y`` labels in range; keyword arrays override or add keys."""
    rng = np.random.default_rng(seed)
    content: dict[str, object] = {
        "x": rng.standard_normal((n, n_in)).astype(np.float32),
        "y": rng.integers(0, n_classes, n).astype(np.int64),
    }
    for k, v in arrays.items():
        if v is None:
            content.pop(k, None)
        else:
            content[k] = v
    np.savez(path, **content)
    return path
