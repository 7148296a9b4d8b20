"""Outputs of `lipgraph certify`: the verdict line on stderr, several formats from one inference,
written all or nothing, SARIF 2.1.0 valid against its published schema, GitHub and GitLab formats."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.ci.helpers import DATA, MODEL, certify, run

SCHEMA = Path(__file__).resolve().parents[1] / "report" / "sarif-schema-2.1.0.json"
FAIL = ("--min-clean-accuracy", "0.99", "--min-certified-accuracy", "0.5=0.5", "--no-config")


def _sarif_errors(doc: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft4Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_failing_gate_written_to_a_file_still_says_why_on_stderr(capsys, tmp_path) -> None:
    report = tmp_path / "report.md"
    rc, out, err = certify(capsys, *FAIL, "--format", "markdown", "-o", str(report))
    assert rc == 1 and out == ""
    assert err.splitlines() == [err.strip()]  # one line
    assert err.startswith("lipgraph: FAIL 1 of 2 gates: clean_accuracy 0.9805 < 0.99")
    assert report.read_text().startswith("## lipgraph certify")
    # passing, and without gates: a line too; --quiet: nothing
    rc, _, err = certify(capsys, "--no-config", "--min-clean-accuracy", "0.5", "-o", f"json={tmp_path / 'a.json'}")
    assert rc == 0 and err == "lipgraph: PASS 1 of 1 gates\n"
    rc, _, err = certify(capsys, "--no-config", "--eps", "0.5", "-o", f"json={tmp_path / 'a.json'}")
    assert rc == 0 and err == "lipgraph: no gates configured; certified accuracy 60.16% at 0.5\n"
    rc, _, err = certify(capsys, *FAIL, "-q", "-o", f"json={tmp_path / 'a.json'}")
    assert rc == 1 and err == ""


def test_one_run_writes_every_format_from_one_inference(capsys, tmp_path, monkeypatch) -> None:
    from lipgraph import inference

    calls = []
    real_run = inference.Runner.run

    def counted(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return real_run(self, *a, **k)

    monkeypatch.setattr(inference.Runner, "run", counted)
    files = {fmt: tmp_path / f"r.{fmt}" for fmt in ("json", "junit", "markdown", "html", "sarif", "gitlab")}
    rc, out, err = certify(
        capsys, *FAIL, *[a for fmt, p in files.items() for a in ("--output", f"{fmt}={p}")], "--format", "github"
    )
    assert rc == 1, err
    assert len(calls) == 1  # one inference behind all the reports
    rep = json.loads(files["json"].read_text())
    assert rep["passed"] is False and len(rep["gates"]) == 2
    junit = ET.parse(files["junit"]).getroot()
    assert junit.find("testsuite").get("failures") == "1"
    assert "❌" in files["markdown"].read_text() and files["html"].read_text().startswith("<!DOCTYPE html>")
    sarif = json.loads(files["sarif"].read_text())
    assert _sarif_errors(sarif) == []
    results = sarif["runs"][0]["results"]
    assert [r["ruleId"] for r in results] == ["min-clean-accuracy"]
    assert results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == MODEL.resolve().as_uri()
    assert "0.9805 < 0.99" in results[0]["message"]["text"]
    gitlab = json.loads(files["gitlab"].read_text())
    assert [i["check_name"] for i in gitlab] == ["lipgraph/min-clean-accuracy"]
    assert gitlab[0]["location"] == {"path": str(MODEL), "lines": {"begin": 1}}
    # stdout: the GitHub annotations, one ::error per failed gate and a ::notice with the verdict
    lines = out.splitlines()
    assert [ln.split(" ", 1)[0] for ln in lines] == ["::error", "::notice"]
    assert "title=lipgraph min-clean-accuracy::" in lines[0]


def test_sarif_schema_check_can_fail() -> None:
    """The vendored schema rejects what it should (so a passing validation means something)."""
    assert _sarif_errors({"version": "2.1.0", "runs": [{"tool": {"driver": {}}}]})
    assert _sarif_errors({"version": "2.0.0", "runs": []})


def test_relative_model_path_and_passing_run_give_an_empty_sarif(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(MODEL.parent.parent)
    out = tmp_path / "r.sarif"
    rc, _, _ = run(
        capsys, "certify", "sample_models/groupsort.onnx", "--data", str(DATA), "--no-config", "-o", f"sarif={out}"
    )
    doc = json.loads(out.read_text())
    assert rc == 0 and _sarif_errors(doc) == [] and doc["runs"][0]["results"] == []
    assert doc["runs"][0]["artifacts"][0]["location"]["uri"] == "sample_models/groupsort.onnx"


def test_classic_format_and_output_pairs_still_work(capsys, tmp_path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.xml"
    rc, out, _ = certify(capsys, "--no-config", "--format", "json", "-o", str(a), "--format", "junit", "-o", str(b))
    assert rc == 0 and out == ""
    assert json.loads(a.read_text())["samples"] == 359 and ET.parse(b).getroot().tag == "testsuites"
    rc, out, _ = certify(capsys, "--no-config", "--format", "json")
    assert rc == 0 and json.loads(out)["samples"] == 359


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--format", "json", "--format", "junit", "-o", "{d}/a.json"], "one --format per -o FILE"),
        (["--format", "json", "--format", "junit"], "one --format per -o FILE"),
        (["-o", "json={d}/a.json", "-o", "junit={d}/a.json"], "named for two outputs"),
        (["-o", "xml={d}/a.xml"], "unknown format 'xml'"),
        (["-o", "json={d}/missing/a.json"], "does not exist"),
    ],
)
def test_bad_output_plans_fail_before_any_work(capsys, tmp_path, args, needle) -> None:
    rc, _, err = certify(capsys, *[a.format(d=tmp_path) for a in args])
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_all_outputs_or_none(capsys, tmp_path, monkeypatch) -> None:
    """A renderer that fails after others succeeded leaves no report at all (and no temp files)."""
    from lipgraph.report import sarif

    def broken(_report):  # noqa: ANN001, ANN202
        raise RuntimeError("boom")

    monkeypatch.setattr(sarif, "render_sarif", broken)
    rc, _, err = certify(
        capsys, "--no-config", "-o", f"json={tmp_path / 'a.json'}", "-o", f"sarif={tmp_path / 'a.sarif'}"
    )
    assert rc == 2 and "internal error" in err
    assert list(tmp_path.iterdir()) == []


def _refused_model(path: Path) -> None:
    """x -> x^T x (bilinear in the input: no global bound) -> MatMul: two refused nodes' worth of graph."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    g = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0], name="t"),
            helper.make_node("MatMul", ["xt", "x"], ["x2"], name="gram"),
            helper.make_node("Exp", ["x2"], ["e"], name="exp"),
            helper.make_node("MatMul", ["e", "w"], ["logits"], name="head"),
        ],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_refused_model_sarif_names_each_node_and_other_reports_stay_unwritten(capsys, tmp_path) -> None:
    model = tmp_path / "bad.onnx"
    _refused_model(model)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).random((4, 4), dtype=np.float32))
    sarif_path, json_path, gl_path = tmp_path / "r.sarif", tmp_path / "r.json", tmp_path / "gl.json"
    rc, out, err = run(
        capsys,
        "certify",
        str(model),
        "--data",
        str(data),
        "--no-config",
        "-o",
        f"sarif={sarif_path}",
        "-o",
        f"json={json_path}",
        "-o",
        f"gitlab={gl_path}",
        "--format",
        "github",
    )
    assert rc == 2 and "without a sound Lipschitz bound" in err
    assert not json_path.exists()
    doc = json.loads(sarif_path.read_text())
    assert _sarif_errors(doc) == []
    results = doc["runs"][0]["results"]
    assert {r["locations"][0]["logicalLocations"][0]["name"] for r in results} == {"gram", "exp"}
    assert all(r["ruleId"] == "unsupported-node" for r in results)
    assert doc["runs"][0]["invocations"][0]["executionSuccessful"] is False
    assert len(json.loads(gl_path.read_text())) == 2
    assert out.count("::error ") == 2


def test_github_annotation_escaping() -> None:
    from lipgraph.report.ci_annotations import render_github

    rep = {
        "gates": [{"name": "g", "kind": "max-lipschitz", "passed": False, "message": "50% off\nnext: line"}],
        "warnings": ["a, b: c"],
        "meta": {"model": "dir,x/m:1.onnx"},
    }
    lines = render_github(rep).splitlines()
    assert lines[0] == (
        "::error file=dir%2Cx/m%3A1.onnx,line=1,title=lipgraph max-lipschitz::gate g failed: 50%25 off%0Anext: line"
    )
    assert lines[1].endswith("::a, b: c") and lines[2].startswith("::notice ")
