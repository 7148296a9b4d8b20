"""The `lipgraph bound`, `rules`, `rule` and `--version` commands (DESIGN.md's command-line contract).

The numbers printed are checked against the exact norm of the model's weights (float64 SVD), so a
renderer that rounds, drops or mislabels the bound fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from lipgraph.cli import main
from tests.helpers.onnx_oracle import make_model, spectral

RNG = np.random.default_rng(5)
A = RNG.standard_normal((5, 4)).astype(np.float32)
B = RNG.standard_normal((4, 3)).astype(np.float32)
WANT = spectral(A) * spectral(B)


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "B"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="sm", axis=-1),
    ]
    path = tmp_path / "mlp.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 5])], ["probs"], {"A": A, "B": B}), str(path))
    return path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_error_line(err: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err


def test_text(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "bound", str(model_path))
    assert rc == 0, err
    m = re.search(r"Lipschitz bound \(L2, input -> logits\): ([0-9.eE+-]+)", out)
    assert m, out
    assert float(m.group(1)) == pytest.approx(WANT, rel=1e-6)
    # The printed bound is rounded up, never below the sound value (a printed 8-digit bound is used).
    from lipgraph import analyze

    assert float(m.group(1)) >= analyze(model_path).bound
    for name in ("fc1", "act", "fc2"):
        assert re.search(rf"^{name}\s", out, re.M), out
    assert "softmax" in out.lower()  # the cut is reported as a warning


def test_json(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "bound", str(model_path), "--format", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert WANT <= doc["lipschitz_bound"] <= WANT * (1 + 1e-6)
    assert [n["name"] for n in doc["nodes"]] == ["fc1", "act", "fc2"]
    for n in doc["nodes"]:
        assert {"name", "op_type", "bound", "method"} <= set(n)
    fc1 = doc["nodes"][0]
    assert spectral(A) <= fc1["bound"] <= spectral(A) * (1 + 1e-6)
    meta = doc["meta"]
    assert meta["model_sha256"] == __import__("hashlib").sha256(model_path.read_bytes()).hexdigest()
    assert meta["opset"] == 17
    assert meta["versions"]["onnx"] == onnx.__version__
    assert isinstance(meta["time_bound_s"], float)
    assert any("softmax" in w.lower() for w in doc["warnings"])


def test_markdown(model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "bound", str(model_path), "--format", "markdown")
    assert rc == 0, err
    table = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, three nodes
    cells = [len(re.findall(r"(?<!\\)\|", ln)) for ln in table]  # escaped pipes inside cells do not count
    assert cells == [6] * len(table), table
    m = re.search(r"\*\*Lipschitz bound[^:]*: ([0-9.eE+-]+)\*\*", out)
    assert m and float(m.group(1)) == pytest.approx(WANT, rel=1e-6)
    assert float(m.group(1)) >= json.loads(_run(capsys, "bound", str(model_path), "--format", "json")[1])[
        "lipschitz_bound"]


@pytest.mark.parametrize("fmt", ["text", "json", "markdown"])
def test_output_file_matches_stdout(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    fmt: str) -> None:
    out_file = tmp_path / "reports" / f"r.{fmt}"
    out_file.parent.mkdir()
    out_file.write_text("old contents that must be replaced entirely\n" * 100)
    rc, out, err = _run(capsys, "bound", str(model_path), "--format", fmt, "-o", str(out_file))
    assert rc == 0, err
    assert out == ""
    written = out_file.read_text()
    _, ref, _ = _run(capsys, "bound", str(model_path), "--format", fmt)
    if fmt == "json":  # timing differs between runs
        a, b = json.loads(written), json.loads(ref)
        a["meta"].pop("time_bound_s")
        b["meta"].pop("time_bound_s")
        assert a == b
    else:
        assert written == ref
    assert sorted(p.name for p in out_file.parent.iterdir()) == [out_file.name]  # no temp file left


def test_output_untouched_when_analysis_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    onnx.save(make_model([helper.make_node("Exp", ["x"], ["y"])], [("x", [1, 3])], ["y"]), str(bad))
    out_file = tmp_path / "out" / "r.json"
    out_file.parent.mkdir()
    out_file.write_text("previous report\n")
    rc, _, err = _run(capsys, "bound", str(bad), "--format", "json", "-o", str(out_file))
    assert rc == 2 and "Exp" in err
    assert out_file.read_text() == "previous report\n"
    assert [p.name for p in out_file.parent.iterdir()] == ["r.json"]


def test_output_write_failure_leaves_old_file(model_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure at the final rename must leave the old report whole and no temp file behind.
    import lipgraph.report as report

    out_file = tmp_path / "o" / "r.txt"
    out_file.parent.mkdir()
    out_file.write_text("previous\n")

    def boom(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", boom)
    rc, _, err = _run(capsys, "bound", str(model_path), "-o", str(out_file))
    assert rc == 2
    _assert_one_error_line(err)
    assert "cannot write" in err and "internal error" not in err
    assert out_file.read_text() == "previous\n"
    assert [p.name for p in out_file.parent.iterdir()] == ["r.txt"]


def test_output_into_missing_folder(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "nope" / "r.json"
    rc, out, err = _run(capsys, "bound", str(model_path), "--format", "json", "-o", str(target))
    assert rc == 2
    _assert_one_error_line(err)
    assert "nope" in err
    assert out == ""
    assert not (tmp_path / "nope").exists()


def test_output_is_a_directory(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "bound", str(model_path), "-o", str(tmp_path))
    assert rc == 2
    _assert_one_error_line(err)


def test_input_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [helper.make_node("MatMul", ["x", "A"], ["xa"]), helper.make_node("MatMul", ["z", "B2"], ["zb"]),
             helper.make_node("Add", ["xa", "zb"], ["y"])]
    b2 = RNG.standard_normal((2, 4)).astype(np.float32) * 7
    path = tmp_path / "two.onnx"
    onnx.save(make_model(nodes, [("x", [1, 5]), ("z", [1, 2])], ["y"], {"A": A, "B2": b2}), str(path))
    rc, _, err = _run(capsys, "bound", str(path))
    assert rc == 2
    _assert_one_error_line(err)
    assert "x, z" in err and "--input" in err
    rc, out, err = _run(capsys, "bound", str(path), "--input", "z", "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["lipschitz_bound"] == pytest.approx(spectral(b2), rel=1e-6)
    rc, _, err = _run(capsys, "bound", str(path), "--input", "w")
    assert rc == 2 and "x, z" in err


@pytest.mark.parametrize("args", [
    ["bound", "/definitely/not/here.onnx"],
    ["bound"],
    ["bound", "MODEL", "--format", "yaml"],
    ["frobnicate"],
])
def test_usage_errors_are_one_line(args: list[str], model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(model_path) if a == "MODEL" else a for a in args]
    rc, _, err = _run(capsys, *args)
    assert rc == 2
    _assert_one_error_line(err)


@pytest.mark.parametrize("seed", range(3))
def test_printed_bounds_round_up(seed: int) -> None:
    from lipgraph.report.tables import fmt_upper

    rng = np.random.default_rng(seed)
    for x in rng.uniform(0, 10, 2000) * 10.0 ** rng.integers(-8, 8, 2000):
        for digits in (6, 8):
            s = fmt_upper(float(x), digits)
            assert float(s) >= x
            assert float(s) <= x * (1 + 10.0 ** (1 - digits))


def test_bare_command_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys)
    assert rc == 2
    assert "Usage:" in err and "\n  bound" in err  # the real multi-line help, commands listed
    assert "error" not in err.splitlines()[0]


def test_rules_table(capsys: pytest.CaptureFixture[str]) -> None:
    from lipgraph.rules.registry import all_rules

    rc, out, _ = _run(capsys, "rules")
    assert rc == 0
    for spec in all_rules():
        assert f"{spec.domain}:{spec.op_type}" in out
    assert re.search(r"^linear\s+ai\.onnx:Gemm\s", out, re.M)


def test_rule_gemm(capsys: pytest.CaptureFixture[str]) -> None:
    from lipgraph.rules.registry import rules_for

    rc, out, _ = _run(capsys, "rule", "Gemm")
    assert rc == 0
    assert "ai.onnx:Gemm" in out
    assert rules_for("Gemm")[0].doc in out
    rc, out_lower, _ = _run(capsys, "rule", "gemm")  # case-insensitive
    assert rc == 0 and out_lower == out


def test_rule_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "rule", "Nope")
    assert rc == 2
    _assert_one_error_line(err)
    assert "Nope" in err and out == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import lipgraph

    rc, out, _ = _run(capsys, "--version")
    assert rc == 0
    assert lipgraph.__version__ in out
    assert f"onnx {onnx.__version__}" in out
    assert f"onnxruntime {version('onnxruntime')}" in out
    assert f"numpy {np.__version__}" in out


def test_subprocess_json(model_path: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "bound", str(model_path), "--format", "json",
                           "-o", str(out_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert WANT <= json.loads(out_file.read_text())["lipschitz_bound"] <= WANT * (1 + 1e-6)
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "onnxruntime" in proc.stdout


def test_report_file_has_the_usual_mode(tmp_path) -> None:
    """Reports are written via a temp file; they must not keep mkstemp's owner-only 0600 mode."""
    import os
    import stat

    from lipgraph.atomic import _default_mode
    from lipgraph.report import write_atomic

    out = tmp_path / "r.txt"
    write_atomic(out, "hello\n")
    assert out.read_text() == "hello\n"
    assert stat.S_IMODE(os.stat(out).st_mode) == _default_mode()


def test_printed_radii_round_down_and_bounds_up() -> None:
    from lipgraph.report.tables import fmt_lower, fmt_upper

    assert fmt_lower(0.5574889) == "0.557488"
    assert fmt_upper(0.5574881) == "0.557489"
    assert fmt_lower(-0.5574881) == "-0.557489"
    assert float(fmt_lower(1 / 3)) <= 1 / 3 <= float(fmt_upper(1 / 3))
    assert fmt_lower(0.0) == "0"
