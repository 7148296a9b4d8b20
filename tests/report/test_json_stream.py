"""`certify --per-sample`: the JSON report streamed row chunk by row chunk (lipgraph.report.json_stream).

The bytes must be exactly those of the one-string rendering (``render_json``), for every chunk size and for
the edge cases (no labels, infinite radii, no samples); a failure midway must leave no report, no temp
file, and an earlier report at the same path untouched.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lipgraph.certify import certify
from lipgraph.cli import main
from lipgraph.cli.outputs import Output, emit
from lipgraph.report import json_stream
from lipgraph.report.certify import render_json

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "plain.onnx"
DATA = ROOT / "sample_models" / "digits_test.npz"


@pytest.fixture(scope="module")
def cert():
    with np.load(DATA) as d:
        x, y = d["x"][:37], d["y"][:37]
    return certify(str(MODEL), x, y, [0.1, 0.5], per_sample=True, tight_pairs="off")


@pytest.mark.parametrize("chunk", [1, 5, 36, 37, 4096])
def test_streamed_json_is_byte_identical_to_the_one_string_rendering(cert, chunk):
    want = render_json(cert)
    assert '"per_sample": [' in want
    assert "".join(json_stream.json_chunks(cert, rows_per_chunk=chunk)) == want


def test_edge_cases_render_identically(cert):
    n = cert.samples
    radii = cert.radii.copy()
    radii[3] = np.inf  # allow_nan: "Infinity", as json.dumps writes it
    cases = [
        dataclasses.replace(cert, labels=None, radii=radii),
        dataclasses.replace(
            cert,
            samples=0,
            radii=radii[:0],
            predictions=cert.predictions[:0],
            correct=cert.correct[:0],
            labels=cert.labels[:0],
        ),
        dataclasses.replace(cert, per_sample=False),
    ]
    for c in cases:
        assert "".join(json_stream.json_chunks(c, rows_per_chunk=4)) == render_json(c)
    assert json.loads("".join(json_stream.json_chunks(cases[0])))["per_sample"][3]["radius"] == float("inf")
    assert n > 8


def test_other_formats_are_rendered_without_the_rows(cert, tmp_path, monkeypatch):
    """The text/markdown reports never build the rows (the list of dicts existed once per format before)."""
    calls = []
    real = type(cert).to_json

    def spy(self, per_sample=None):  # noqa: ANN001, ANN202
        calls.append(self.per_sample if per_sample is None else per_sample)
        return real(self, per_sample)

    monkeypatch.setattr(type(cert), "to_json", spy)
    plan = [
        Output("json", str(tmp_path / "r.json")),
        Output("text", str(tmp_path / "r.txt")),
        Output("markdown", str(tmp_path / "r.md")),
    ]
    emit(plan, cert)
    assert calls and not any(calls)  # the JSON's rows come from the arrays, not from to_json
    monkeypatch.undo()
    assert (tmp_path / "r.json").read_text() == render_json(cert)


def test_a_failure_midway_leaves_no_report_and_keeps_the_old_one(cert, tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    out.write_text("old report\n")
    txt = tmp_path / "report.txt"
    real = json_stream._rows
    seen = []

    def failing(c, start, stop):  # noqa: ANN001, ANN202
        seen.append(start)
        if len(seen) == 2:
            raise RuntimeError("disk gone midway")
        return real(c, start, stop)

    monkeypatch.setattr(json_stream, "_rows", failing)
    monkeypatch.setattr(json_stream, "ROWS_PER_CHUNK", 10)
    with pytest.raises(RuntimeError, match="midway"):
        emit([Output("text", str(txt)), Output("json", str(out))], cert)
    assert len(seen) == 2  # it did fail after writing a chunk
    assert out.read_text() == "old report\n"
    assert not txt.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp file left


def test_cli_per_sample_report_through_a_file_and_stdout(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(json_stream, "ROWS_PER_CHUNK", 7)
    out = tmp_path / "r.json"
    args = ["certify", str(MODEL), "--data", str(DATA), "--limit", "23", "--per-sample", "-q", "--tight-pairs", "off"]
    assert main([*args, "-o", f"json={out}", "-o", f"text={tmp_path / 'r.txt'}"]) == 0
    d = json.loads(out.read_text())
    assert [r["index"] for r in d["per_sample"]] == list(range(23))
    assert "per_sample" not in (tmp_path / "r.txt").read_text()
    capsys.readouterr()
    assert main([*args, "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert [r["radius"] for r in s["per_sample"]] == [r["radius"] for r in d["per_sample"]]
