"""Gates end to end through the CLI: exit codes, --exit-zero, junit failures, baseline regression,
[tool.lipgraph] in the nearest pyproject.toml and flag precedence, malformed settings (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lipgraph.cli import main


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["certify", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def base_report(digits_mlp, tmp_path_factory) -> dict:
    """A plain run's JSON report: the actual numbers the gates are set around."""
    out = tmp_path_factory.mktemp("base") / "base.json"
    rc = main(["certify", str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--eps", "0.1",
               "--eps", "0.2", "--format", "json", "-o", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())
    d["_path"] = str(out)
    return d


def test_report_keys_and_no_gates(base_report) -> None:
    for key in ("lipschitz_bound", "samples", "clean_accuracy", "certified_accuracy", "median_radius",
                "radius_method", "passed", "nodes", "meta"):
        assert key in base_report
    assert base_report["passed"] is True and base_report["gates"] == []
    assert set(base_report["certified_accuracy"]) == {"0.1", "0.2"}
    assert base_report["radius_method"] == "pairwise"
    assert {"name", "op_type", "bound", "method"} <= set(base_report["nodes"][0])
    for key in ("model_sha256", "opset", "versions", "provider", "time_bound_s", "time_inference_s"):
        assert key in base_report["meta"]


def test_thresholds_exit_codes_and_exit_zero(digits_mlp, base_report, capsys) -> None:
    acc = base_report["certified_accuracy"]["0.1"]
    m, d = str(digits_mlp.onnx_path), str(digits_mlp.npz_path)
    rc, out, _ = _run(capsys, m, "--data", d, "--min-certified-accuracy", f"0.1={acc}", "--format", "json")
    assert rc == 0 and json.loads(out)["passed"] is True
    above = min(acc + 0.01, 1.0)
    rc, out, _ = _run(capsys, m, "--data", d, "--min-certified-accuracy", f"0.1={above}", "--format", "json")
    rep = json.loads(out)
    assert rc == 1 and rep["passed"] is False
    assert rep["gates"][0]["actual"] == pytest.approx(acc)
    rc, out, _ = _run(capsys, m, "--data", d, "--min-certified-accuracy", f"0.1={above}", "--exit-zero")
    assert rc == 0 and "FAIL" in out
    clean = base_report["clean_accuracy"]
    rc, _, _ = _run(capsys, m, "--data", d, "--min-clean-accuracy", str(min(clean + 0.01, 1.0)))
    assert rc == 1
    lip = base_report["lipschitz_bound"]
    assert _run(capsys, m, "--data", d, "--max-lipschitz", str(lip * 0.9))[0] == 1
    assert _run(capsys, m, "--data", d, "--max-lipschitz", str(lip * 1.1))[0] == 0
    # a gate at an eps outside the grid is evaluated too (and added to the grid)
    rc, out, _ = _run(capsys, m, "--data", d, "--eps", "0.1", "--min-certified-accuracy", "0.15=0", "--format", "json")
    assert rc == 0 and "0.15" in json.loads(out)["certified_accuracy"]


def test_junit_one_testcase_per_gate_with_failures(digits_mlp, base_report, capsys, tmp_path) -> None:
    acc = base_report["certified_accuracy"]["0.2"]
    out = tmp_path / "junit.xml"
    rc, _, _ = _run(capsys, str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path),
                    "--min-certified-accuracy", "0.2=0", "--min-certified-accuracy", f"0.1={1.0}",
                    "--min-clean-accuracy", "0.5", "--format", "junit", "-o", str(out))
    assert rc == 1 if base_report["certified_accuracy"]["0.1"] < 1.0 else 0
    root = ET.parse(out).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 3
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["certified_accuracy@0.1"]
    assert root.find("testsuite").get("failures") == "1"
    assert acc >= 0


def test_baseline_regression(digits_mlp, base_report, capsys, tmp_path) -> None:
    m, d = str(digits_mlp.onnx_path), str(digits_mlp.npz_path)
    # the same model against its own report: no drop
    assert _run(capsys, m, "--data", d, "--baseline", base_report["_path"], "--max-drop", "0")[0] == 0
    better = dict(base_report)
    better["certified_accuracy"] = {k: min(v + 0.05, 1.0) for k, v in base_report["certified_accuracy"].items()}
    better["certified_accuracy"]["7.5"] = 0.9  # an eps only the baseline has: compared too (added to the grid)
    bp = tmp_path / "better.json"
    bp.write_text(json.dumps(better))
    rc, out, _ = _run(capsys, m, "--data", d, "--baseline", str(bp), "--max-drop", "0.01", "--format", "json")
    rep = json.loads(out)
    assert rc == 1
    names = {g["name"]: g for g in rep["gates"]}
    assert not names["baseline_drop@7.5"]["passed"]
    assert rep["baseline"]["certified_accuracy"]["0.1"] == better["certified_accuracy"]["0.1"]
    better["certified_accuracy"].pop("7.5")
    bp.write_text(json.dumps(better))
    assert _run(capsys, m, "--data", d, "--baseline", str(bp), "--max-drop", "0.06")[0] == 0
    assert _run(capsys, m, "--data", d, "--baseline", str(bp), "--max-drop", "0.01")[0] == 1
    # a file that is not a certify report, and --max-drop without a baseline: errors
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    rc, _, err = _run(capsys, m, "--data", d, "--baseline", str(junk))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, _, err = _run(capsys, m, "--data", d, "--max-drop", "0.1")
    assert rc == 2 and "--baseline" in err


def test_pyproject_config_and_flag_precedence(digits_mlp, base_report, capsys, tmp_path, monkeypatch) -> None:
    m, d = str(digits_mlp.onnx_path), str(digits_mlp.npz_path)
    lip = base_report["lipschitz_bound"]
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.lipgraph]\n'
        f'min-certified-accuracy = {{"0.1" = 1.0}}\nmax_lipschitz = {lip * 0.5}\neps = [0.1, 0.3]\n'
    )
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # the nearest pyproject.toml is two folders up
    rc, out, _ = _run(capsys, m, "--data", d, "--format", "json")
    rep = json.loads(out)
    assert rc == 1
    assert set(rep["certified_accuracy"]) == {"0.1", "0.3"}
    assert {g["name"] for g in rep["gates"]} == {"certified_accuracy@0.1", "lipschitz_bound"}
    assert rep["meta"]["config"].endswith("pyproject.toml")
    # flags override the file's settings one by one
    rc, out, _ = _run(capsys, m, "--data", d, "--format", "json", "--min-certified-accuracy", "0.1=0",
                      "--max-lipschitz", str(lip * 2), "--eps", "0.2")
    rep = json.loads(out)
    assert rc == 0, rep["gates"]
    assert set(rep["certified_accuracy"]) == {"0.1", "0.2"}
    # a nearer pyproject.toml without [tool.lipgraph] is skipped (as ruff does): the root's gates still apply
    (tmp_path / "a" / "pyproject.toml").write_text('[project]\nname = "y"\n')
    rc, out, _ = _run(capsys, m, "--data", d, "--format", "json")
    assert rc == 1 and len(json.loads(out)["gates"]) == 2
    # a malformed setting in the file is an error, not an ignored gate
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.lipgraph]\nmin-clean-accuracy = 1.5\n')
    rc, _, err = _run(capsys, m, "--data", d)
    assert rc == 2 and "between 0 and 1" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "a" / "pyproject.toml").write_text('[tool.lipgraph]\nmin-certifed-accuracy = {"0.1" = 0.5}\n')
    rc, _, err = _run(capsys, m, "--data", d)
    assert rc == 2 and "unknown key" in err


@pytest.mark.parametrize("args,needle", [
    (["--min-certified-accuracy", "0.5"], "EPS=ACC"),
    (["--min-certified-accuracy", "-0.1=0.5"], ">= 0"),
    (["--min-certified-accuracy", "0.5=1.5"], "between 0 and 1"),
    (["--min-certified-accuracy", "a=b"], "number"),
    (["--eps", "-1"], "eps"),
    (["--min-clean-accuracy", "2"], "between 0 and 1"),
    (["--max-lipschitz", "-3"], ">= 0"),
    (["--format", "xml"], "format"),
])
def test_malformed_gates_exit_2_one_line(digits_mlp, capsys, tmp_path, args, needle) -> None:
    out = tmp_path / "r.json"
    rc, _, err = _run(capsys, str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), *args, "-o", str(out))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not out.exists()


def test_markdown_and_text_views(digits_mlp, base_report, capsys) -> None:
    rc, out, _ = _run(capsys, str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--eps", "0.1",
                      "--min-certified-accuracy", "0.1=0", "--format", "markdown")
    assert rc == 0
    assert out.startswith("## lipgraph certify") and "| 0.1 |" in out and "all gates passed" in out
    acc = base_report["certified_accuracy"]["0.1"]
    from lipgraph.numbers import percent_down

    assert percent_down(acc) in out  # rounded down, never up
    rc, out, _ = _run(capsys, str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--eps", "0.1")
    assert rc == 0 and percent_down(acc) in out and "pairwise" in out


def test_real_subprocess_exit_code_and_report(digits_mlp, tmp_path) -> None:
    exe = Path(sys.executable).with_name("lipgraph")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "lipgraph"]),
           "certify", str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path),
           "--min-certified-accuracy", "0.1=1.0", "--min-certified-accuracy", "0.1=1.0",
           "--format", "junit", "-o", str(tmp_path / "j.xml")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 1, p.stderr
    # the report went to the file; the log still says why the job failed, in one line
    assert p.stdout == "" and p.stderr.startswith("lipgraph: FAIL 1 of 1 gates: certified_accuracy@0.1 ")
    assert len(p.stderr.splitlines()) == 1
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.find("testsuite").get("failures") == "1"
    p = subprocess.run(cmd[:-4] + ["--exit-zero", "-q"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0 and "FAIL" in p.stdout
