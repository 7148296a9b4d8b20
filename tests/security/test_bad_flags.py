"""Bad flags and bad gate settings: exit 2, one line, no traceback, no report -- checked before any work.

Every case runs from a fresh folder (no pyproject.toml above it, unless the case writes one), with
a valid model and valid data, so the flag alone is what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.security.helpers import (
    assert_no_report,
    assert_refused,
    data_npz,
    mlp_model,
    run_cli,
    run_subprocess,
    save,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)  # the gates read the nearest pyproject.toml: keep the repo's out of it
    save(mlp_model(), tmp_path / "m.onnx")
    data_npz(tmp_path / "d.npz")
    (tmp_path / "out").mkdir()
    return tmp_path


def _certify(capsys: pytest.CaptureFixture[str], work: Path, *flags: str, output: Path | None = None):  # noqa: ANN202
    out = output or work / "out" / "report.json"
    res = run_cli(["certify", work / "m.onnx", "--data", work / "d.npz", "-q", "-o", out, *flags], capsys)
    return res, out


def test_control_passes(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, "--format", "json", "--eps", "0.1", "--min-certified-accuracy", "0.1=0")
    assert res.rc == 0, res.err
    assert json.loads(out.read_text())["passed"] is True


@pytest.mark.parametrize("value", ["-0.5", "-1e-9", "nan", "inf", "abc"])
def test_bad_eps(value: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, "--eps", value)
    assert_refused(res, "--eps", output=out)


@pytest.mark.parametrize("gate", ["abc", "0.5", "0.5=", "=0.8", "0.5=0.8=0.9", "x=0.8", "0.5=y", "-1=0.5",
                                  "nan=0.5", "0.5=nan"])
def test_malformed_certified_accuracy_gate(gate: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, "--min-certified-accuracy", gate)
    assert_refused(res, gate, output=out)


@pytest.mark.parametrize("flags", [
    ("--min-certified-accuracy", "0.5=1.01"),
    ("--min-clean-accuracy", "1.5"),
    ("--min-clean-accuracy", "-0.1"),
    ("--max-drop", "2", "--baseline", "base.json"),
])
def test_accuracy_out_of_range(flags: tuple[str, ...], work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "base.json").write_text(json.dumps({"certified_accuracy": {"0.1": 0.5}}))
    res, out = _certify(capsys, work, *flags)
    assert_refused(res, "between 0 and 1", output=out)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "ten"])
def test_bad_max_lipschitz(value: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, "--max-lipschitz", value)
    assert_refused(res, "--max-lipschitz", output=out)


def test_unknown_format_certify(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, "--format", "pdf")
    assert_refused(res, "--format", "pdf", output=out)


def test_unknown_format_bound(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out" / "b.txt"
    res = run_cli(["bound", work / "m.onnx", "--format", "junit", "-o", out], capsys)
    assert_refused(res, "--format", "junit", output=out)


@pytest.mark.parametrize("command", ["bound", "certify"])
def test_output_in_missing_folder(command: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "no" / "such" / "folder" / "r.json"
    argv = [command, work / "m.onnx", "-o", out] + (["--data", work / "d.npz", "-q"] if command == "certify" else [])
    res = run_cli(argv, capsys)
    assert_refused(res, "does not exist", "create it first", output=out)
    assert not (work / "no").exists()


def test_output_is_a_directory(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, _ = _certify(capsys, work, output=work / "out")
    assert_refused(res, "is a directory")
    assert list((work / "out").iterdir()) == []


@pytest.mark.parametrize("flags,words", [
    (("--batch-size", "0"), ("--batch-size",)),
    (("--limit", "0"), ("--limit",)),
    (("--providers", "tpu"), ("tpu", "not available")),
    (("--providers", ","), ("--providers",)),
    (("--max-drop", "0.1"), ("--baseline",)),
    (("--baseline", "missing.json"), ("missing.json", "does not exist")),
    (("--no-such-flag",), ("--no-such-flag",)),
])
def test_other_bad_flags(flags: tuple[str, ...], words: tuple[str, ...], work: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, work, *flags)
    assert_refused(res, *words, output=out)


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"certified_accuracy": {"0.1": 7}}',
                                     '{"certified_accuracy": {"x": 0.5}}'])
def test_malformed_baseline(content: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "base.json").write_text(content)
    res, out = _certify(capsys, work, "--baseline", "base.json")
    assert_refused(res, "baseline", output=out)


@pytest.mark.parametrize("toml", [
    "[tool.lipgraph\n",  # not TOML
    "[tool.lipgraph]\nmin-clean-accuracy = 3\n",
    "[tool.lipgraph]\nmin-certified-accuracy = 0.5\n",
    '[tool.lipgraph]\nmin-certified-accuracy = {"0.5" = "high"}\n',
    "[tool.lipgraph]\neps = [-1]\n",
    "[tool.lipgraph]\nmin-clean-acuracy = 0.9\n",  # a typo must not silently drop the gate
])
def test_malformed_pyproject_gates(toml: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "pyproject.toml").write_text(toml)
    res, out = _certify(capsys, work)
    assert_refused(res, "pyproject.toml", output=out)


def test_debug_shows_traceback_and_still_writes_nothing(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = work / "out" / "report.json"
    res = run_cli(["--debug", "certify", work / "m.onnx", "--data", work / "d.npz", "-q", "-o", out,
                   "--min-clean-accuracy", "1.5"], capsys)
    assert res.rc == 2
    assert "Traceback" in res.err
    assert res.err.rstrip().splitlines()[-1].startswith("lipgraph: error:")
    assert_no_report(out)


def test_subprocess_bad_gate(work: Path) -> None:
    out = work / "out" / "sub.json"
    res = run_subprocess(["certify", work / "m.onnx", "--data", work / "d.npz", "-o", out,
                          "--min-certified-accuracy", "0.5=1.2"], cwd=work)
    assert_refused(res, "between 0 and 1", output=out)


def test_gate_failure_is_exit_1_not_2(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other side of the contract: a well-formed gate that fails is exit 1 and the report IS
    written (it says why the gate failed); only bad input is exit 2."""
    res, out = _certify(capsys, work, "--format", "json", "--min-certified-accuracy", "0.1=1.0")
    assert res.rc == 1, res.err
    assert json.loads(out.read_text())["passed"] is False
