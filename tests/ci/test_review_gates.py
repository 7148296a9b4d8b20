"""Review of the CI gate: it never switches itself off silently and always says why it failed.

Each test runs the real CLI on the bundled GroupSort model and digits data (or a tiny onnx.helper model),
no mocks. The holes found by the review (and fixed) are marked "was:" with what happened before.
"""

from __future__ import annotations

import html
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.ci.helpers import DATA, MODEL, run

N = "60"  # samples per run: small enough to keep every test around a second


def _certify(capsys: pytest.CaptureFixture[str], *args: str, data: Path = DATA) -> tuple[int, str, str]:
    return run(capsys, "certify", str(MODEL), "--data", str(data), "--limit", N, *args)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA) as d:
        return d["x"][: int(N)], d["y"][: int(N)]


@pytest.fixture()
def wrong_labels(tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]) -> dict[str, Path]:
    """Every label wrong, stored under a key lipgraph reads (y) and under one it does not (targets)."""
    x, y = digits
    out = {"y": tmp_path / "wrong_y.npz", "targets": tmp_path / "wrong_targets.npz"}
    np.savez(out["y"], x=x, y=(y + 1) % 10)
    np.savez(out["targets"], x=x, targets=(y + 1) % 10)
    return out


@pytest.fixture(scope="module")
def base60(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lipgraph.cli import main

    p = tmp_path_factory.mktemp("base") / "base60.json"
    assert main(["-q", "certify", str(MODEL), "--data", str(DATA), "--limit", N, "--no-config", "-o", f"json={p}"]) == 0
    return p


# ------------------------------------------------------------------ holes found (fixed)
def test_accuracy_gates_refuse_data_without_labels(capsys, wrong_labels) -> None:
    """was: labels under an unread key -> the predictions were certified, every "accuracy" gate passed."""
    rc, _, err = _certify(capsys, "--no-config", "--min-certified-accuracy", "0.1=0.5", data=wrong_labels["y"])
    assert rc == 1 and "certified_accuracy@0.1 0 < 0.5" in err  # the oracle: with the labels read, it fails
    rc, _, err = _certify(capsys, "--no-config", "--min-certified-accuracy", "0.1=0.5", data=wrong_labels["targets"])
    assert rc == 2 and "needs labels" in err and "y / labels / y_test" in err
    rc, _, err = _certify(capsys, "--no-config", "--min-clean-accuracy", "0.5", data=wrong_labels["targets"])
    assert rc == 2 and "needs labels" in err
    # a gate on the bound alone does not need labels
    rc, _, err = _certify(capsys, "--no-config", "--max-lipschitz", "2", data=wrong_labels["targets"])
    assert rc == 0, err


def test_accuracy_gates_refuse_baseline_without_labels(capsys, wrong_labels, base60) -> None:
    rc, _, err = _certify(capsys, "--no-config", "--baseline", str(base60), data=wrong_labels["targets"])
    assert rc == 2 and "--baseline" in err and "needs labels" in err


@pytest.mark.parametrize("flags", [["0.1=0.99", "0.1=0.1"], ["0.1=0.1", "0.10=0.99"]])
def test_same_eps_twice_refused_on_the_command_line(capsys, flags) -> None:
    """was: the last threshold for an eps won silently (0.99 then 0.1 passed)."""
    args = [a for f in flags for a in ("--min-certified-accuracy", f)]
    rc, _, err = _certify(capsys, "--no-config", *args)
    assert rc == 2 and "twice" in err and len(err.strip().splitlines()) == 1


def test_same_eps_twice_refused_in_pyproject(capsys, tmp_path) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text('[tool.lipgraph]\nmin-certified-accuracy = { "0.1" = 0.99, "0.10" = 0.1 }\n')
    rc, _, err = _certify(capsys, "--config", str(cfg))
    assert rc == 2 and "twice" in err
    # the same threshold written twice is no conflict
    cfg.write_text('[tool.lipgraph]\nmin-certified-accuracy = { "0.1" = 0.5, "0.10" = 0.5 }\n')
    assert _certify(capsys, "--config", str(cfg))[0] == 0


def test_max_drop_of_one_refused(capsys, base60, tmp_path) -> None:
    """was: --max-drop 1 (meant: one point) allowed every drop; a gate that cannot fail."""
    rc, _, err = _certify(capsys, "--no-config", "--baseline", str(base60), "--max-drop", "1")
    assert rc == 2 and "below 1" in err and "0.01" in err
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f'[tool.lipgraph]\nbaseline = "{base60}"\nmax-drop = 1.0\n')
    assert _certify(capsys, "--config", str(cfg))[0] == 2
    assert _certify(capsys, "--no-config", "--baseline", str(base60), "--max-drop", "0.99")[0] == 0


def test_baseline_of_other_sample_count_is_said(capsys, base60, tmp_path) -> None:
    """was: a baseline over 60 samples compared with a run over 120 without a word."""
    out = tmp_path / "r.json"
    rc, gh_out, _ = run(
        capsys,
        "certify",
        str(MODEL),
        "--data",
        str(DATA),
        "--limit",
        "120",
        "--no-config",
        "--baseline",
        str(base60),
        "--max-drop",
        "0.5",
        "-o",
        f"json={out}",
        "--format",
        "github",
    )
    rep = json.loads(out.read_text())
    assert rc == 0
    assert any("certified 60 samples, this run 120" in w for w in rep["warnings"])
    assert "::warning" in gh_out and "this run 120" in gh_out  # the GitHub annotations (stdout) say it too
    # the same data: no such warning
    rc, _, _ = _certify(capsys, "--no-config", "--baseline", str(base60), "-o", f"json={out}")
    assert rc == 0 and not any("baseline" in w for w in json.loads(out.read_text())["warnings"])
    # a baseline made by another lipgraph version
    other = json.loads(base60.read_text())
    other["meta"]["versions"]["lipgraph"] = "0.0.1"
    (tmp_path / "old.json").write_text(json.dumps(other))
    rc, _, _ = _certify(capsys, "--no-config", "--baseline", str(tmp_path / "old.json"), "-o", f"json={out}")
    assert rc == 0 and any("lipgraph 0.0.1, this run by" in w for w in json.loads(out.read_text())["warnings"])


def test_nearer_train_only_table_does_not_hide_the_gates(capsys, tmp_path, monkeypatch) -> None:
    """was: a sub-package's [tool.lipgraph.train] was "the nearest config": the root's gates switched off."""
    (tmp_path / "pyproject.toml").write_text("[tool.lipgraph]\nmin-clean-accuracy = 0.999\n")
    sub = tmp_path / "pkg"
    sub.mkdir()
    (sub / "pyproject.toml").write_text("[tool.lipgraph.train]\nepochs = 3\n")
    monkeypatch.chdir(sub)
    rc, _, err = _certify(capsys)
    assert rc == 1 and "clean_accuracy" in err
    # a nearer table with a certify setting still wins (the documented nearest-file rule)
    (sub / "pyproject.toml").write_text(
        "[tool.lipgraph]\nmin-clean-accuracy = 0.5\n[tool.lipgraph.train]\nepochs = 3\n"
    )
    assert _certify(capsys)[0] == 0
    # a gate key in a nearer sub-table is refused, not skipped with its file
    (sub / "pyproject.toml").write_text("[tool.lipgraph.train]\nmin-clean-accuracy = 0.5\n")
    rc, _, err = _certify(capsys)
    assert rc == 2 and "directly under [tool.lipgraph]" in err


@pytest.mark.parametrize(
    "text",
    [
        "[tool.lipgrahp]\nmin-clean-accuracy = 0.999\n",
        "[tool.LipGraph]\nmin-clean-accuracy = 0.999\n",
        "[lipgraph]\nmin-clean-accuracy = 0.999\n",
    ],
)
def test_misspelt_table_refused(capsys, tmp_path, monkeypatch, text) -> None:
    """was: exit 0, "no gates configured"."""
    (tmp_path / "pyproject.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    rc, _, err = _certify(capsys)
    assert rc == 2 and "[tool.lipgraph]" in err
    assert _certify(capsys, "--no-config")[0] == 0


def test_unrelated_tool_tables_are_not_taken_for_misspellings(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.ruff]\nline-length = 120\n[tool.mypy]\nstrict = true\n")
    monkeypatch.chdir(tmp_path)
    assert _certify(capsys)[0] == 0


def test_lipgraph_toml_is_not_silently_ignored(capsys, tmp_path, monkeypatch) -> None:
    (tmp_path / "lipgraph.toml").write_text("min-clean-accuracy = 0.999\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _certify(capsys)
    assert rc == 2 and "lipgraph.toml" in err and "pyproject.toml" in err


def test_failed_gate_says_what_to_do_in_every_format(capsys, tmp_path) -> None:
    """Each output names the gate, the measured value, the threshold and what to do."""
    formats = ("json", "junit", "markdown", "text", "sarif", "gitlab", "github", "html")
    outs = {f: tmp_path / f"r.{f}" for f in formats}
    args = [a for f, p in outs.items() for a in ("-o", f"{f}={p}")]
    rc, _, err = _certify(capsys, "--no-config", "--min-certified-accuracy", "0.5=0.9", *args)
    assert rc == 1
    assert "certified_accuracy@0.5 0.6166 < 0.9" in err  # verdict line: gate, value (rounded down), threshold
    (g,) = json.loads(outs["json"].read_text())["gates"]
    assert g["name"] == "certified_accuracy@0.5" and g["threshold"] == 0.9 and g["passed"] is False
    assert g["actual"] == pytest.approx(37 / 60) and "0.6166 < 0.9" in g["message"] and g["hint"]
    failure = ET.parse(outs["junit"]).getroot().find(".//failure")
    assert failure is not None
    texts = {
        "junit": failure.get("message") or "",
        "markdown": outs["markdown"].read_text(),
        "text": outs["text"].read_text(),
        "sarif": json.loads(outs["sarif"].read_text())["runs"][0]["results"][0]["message"]["text"],
        "gitlab": json.loads(outs["gitlab"].read_text())[0]["description"],
        "github": next(ln for ln in outs["github"].read_text().splitlines() if ln.startswith("::error")),
        "html": html.unescape(outs["html"].read_text()),
    }
    for fmt, text in texts.items():
        assert "0.6166 < 0.9" in text and "to fix:" in text and "min-certified-accuracy" in text, fmt
    assert "certified_accuracy@0.5" in texts["markdown"] + texts["github"] + texts["sarif"]
    # a passing gate carries no hint
    rc, out, _ = _certify(capsys, "--no-config", "--min-certified-accuracy", "0.5=0.1", "--format", "json")
    assert rc == 0 and "hint" not in json.loads(out)["gates"][0]


# ------------------------------------------------------------------ checks that hold
@pytest.mark.parametrize(
    "args",
    [
        ["--min-clean-accuracy", "nan"],
        ["--max-lipschitz", "nan"],
        ["--min-certified-accuracy", "0.5=nan"],
        ["--min-certified-accuracy", "nan=0.5"],
        ["--max-lipschitz", "inf"],
        ["--eps", "nan"],
        ["--min-clean-accuracy", "90"],
        ["--min-certified-accuracy", "0.5=90"],
        ["--max-drop", "-0.01"],
        ["--max-drop", "nan"],
        ["--max-drop", "0.1"],  # the last: without --baseline
    ],
)
def test_nan_percent_and_negative_thresholds_exit_2(capsys, base60, tmp_path, args) -> None:
    out = tmp_path / "r.json"
    extra = ["--baseline", str(base60)] if "--max-drop" in args and args[-1] != "0.1" else []
    rc, _, err = _certify(capsys, "--no-config", *args, *extra, "-o", str(out), "--exit-zero")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("lipgraph: error:")
    assert not out.exists()


@pytest.mark.parametrize(
    "body",
    [
        "min-clean-accuracy = nan",
        "max-lipschitz = inf",
        'min-certified-accuracy = {"0.5" = nan}',
        "min-clean-accuracy = 90",
        "min_clean_acuracy = 0.5",
        "eps = []",
        "min-certified-accuracy = {}",  # was: accepted, a gate that checked nothing
        "[tool.lipgraph.report]\nmin-clean-accuracy = 0.999",  # was: ignored (no command reads the sub-table)
    ],
)
def test_bad_pyproject_values_exit_2(capsys, tmp_path, body) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f"[tool.lipgraph]\n{body}\n")
    rc, _, err = _certify(capsys, "--config", str(cfg))
    assert rc == 2 and err.startswith("lipgraph: error:")


def test_gate_on_an_eps_outside_the_grid_is_evaluated(capsys) -> None:
    rc, out, _ = _certify(
        capsys, "--no-config", "--eps", "0.1", "--min-certified-accuracy", "0.37=1.0", "--format", "json"
    )
    rep = json.loads(out)
    assert rc == 1 and rep["gates"][0]["name"] == "certified_accuracy@0.37" and "0.37" in rep["certified_accuracy"]


@pytest.mark.parametrize("content", [None, "", "{}", '{"certified_accuracy": {"0.5": null}}', "[1]"])
def test_missing_empty_or_malformed_baseline_exit_2(capsys, tmp_path, content) -> None:
    p = tmp_path / "base.json"
    if content is not None:
        p.write_text(content)
    rc, _, err = _certify(capsys, "--no-config", "--baseline", str(p), "--exit-zero")
    assert rc == 2 and "baseline" in err


def test_baseline_without_accuracies_is_bad_input(capsys, tmp_path) -> None:
    """was: exit 1 (a "regression") for a baseline with nothing to compare; it is bad input: exit 2."""
    p = tmp_path / "base.json"
    p.write_text('{"certified_accuracy": {}}')
    rc, _, err = _certify(capsys, "--no-config", "--baseline", str(p), "--exit-zero")
    assert rc == 2 and "empty" in err


def test_all_misclassified_fails_accuracy_gates(capsys, wrong_labels) -> None:
    rc, out, _ = _certify(
        capsys,
        "--no-config",
        "--min-certified-accuracy",
        "0=0.01",
        "--min-clean-accuracy",
        "0.01",
        "--format",
        "json",
        data=wrong_labels["y"],
    )
    rep = json.loads(out)
    assert rc == 1 and [g["actual"] for g in rep["gates"]] == [0.0, 0.0]


def _blowup_model(path: Path) -> None:
    """Ten MatMul+Relu layers whose weight norms multiply past float64 (1e38 each): the bound is infinite."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, cur = [], [], "x"
    for i in range(10):
        w = np.zeros((4, 4), np.float32)
        w[(0, 1) if i % 2 == 0 else (2, 3)] = 1e38
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes += [helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        cur = f"r{i}"
    inits.append(numpy_helper.from_array(np.arange(4, dtype=np.float32), "B"))
    nodes.append(helper.make_node("Add", [cur, "B"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_infinite_bound_never_passes(capsys, tmp_path) -> None:
    """A gate that does not need the bound (clean accuracy: 100% here) must not pass with "no bound"."""
    model, data = tmp_path / "inf.onnx", tmp_path / "d.npz"
    _blowup_model(model)
    np.savez(data, x=np.eye(4, dtype=np.float32) * 1e-3, y=np.full(4, 3))
    rep, gh = tmp_path / "r.json", tmp_path / "r.github"
    rc, _, err = run(
        capsys,
        "certify",
        str(model),
        "--data",
        str(data),
        "--no-config",
        "--min-clean-accuracy",
        "0.5",
        "-o",
        f"json={rep}",
        "-o",
        f"github={gh}",
        "--exit-zero",
    )
    assert rc == 2 and "infinite" in err
    assert not rep.exists() and "::error" in gh.read_text()


def test_report_write_failure_is_exit_2_and_leaves_no_report(capsys, tmp_path) -> None:
    """The second report cannot be written (its temp name is too long): none is published, exit 2."""
    ok, bad = tmp_path / "ok.json", tmp_path / ("a" * 250 + ".xml")
    rc, _, err = _certify(
        capsys, "--no-config", "--min-clean-accuracy", "0.5", "--exit-zero", "-o", f"json={ok}", "-o", f"junit={bad}"
    )
    assert rc == 2 and "cannot write the report" in err
    assert sorted(os.listdir(tmp_path)) == []


# ------------------------------------------------------------------ merge
@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from lipgraph.cli import main

    folder = tmp_path_factory.mktemp("parts")
    out = []
    for k in (1, 2, 3, 4):
        p = folder / f"part{k}.json"
        assert (
            main(
                [
                    "-q",
                    "certify",
                    str(MODEL),
                    "--data",
                    str(DATA),
                    "--limit",
                    "120",
                    "--batch-size",
                    "32",
                    "--no-config",
                    "--shard",
                    f"{k}/4",
                    "-o",
                    str(p),
                ]
            )
            == 0
        )
        out.append(p)
    return out


@pytest.mark.parametrize("gate", ["0.5=0.6", "0.5=0.7"])
def test_merged_verdict_equals_single_run(capsys, parts, gate) -> None:
    single = ["--limit", "120", "--batch-size", "32", "--tight-pairs", "all"]
    rc1, out1, _ = run(
        capsys,
        "certify",
        str(MODEL),
        "--data",
        str(DATA),
        *single,
        "--no-config",
        "--min-certified-accuracy",
        gate,
        "--format",
        "json",
    )
    rc2, out2, _ = run(
        capsys, "merge", *map(str, parts), "--no-config", "--min-certified-accuracy", gate, "--format", "json"
    )
    assert rc1 == rc2 and json.loads(out1)["gates"] == json.loads(out2)["gates"]
    assert json.loads(out1)["certified_accuracy"] == json.loads(out2)["certified_accuracy"]


def test_merge_refuses_missing_and_repeated_parts(capsys, parts) -> None:
    rc, _, err = run(capsys, "merge", *map(str, parts[:3]), "--no-config", "--exit-zero")
    assert rc == 2 and "missing [4]" in err
    rc, _, err = run(capsys, "merge", *map(str, parts), str(parts[3]), "--no-config", "--exit-zero")
    assert rc == 2 and "repeated [4]" in err


def _shard_part(data: Path, k: int, out: Path) -> None:
    """Part k of 2 of ``data`` (batches of 32, no config) written to ``out``."""
    from lipgraph.cli import main

    args = ["-q", "certify", str(MODEL), "--data", str(data), "--batch-size", "32", "--no-config"]
    assert main([*args, "--shard", f"{k}/2", "-o", str(out)]) == 0


def test_merge_refuses_accuracy_gates_on_unlabeled_parts(capsys, tmp_path, digits) -> None:
    x, _ = digits
    data = tmp_path / "x.npy"
    np.save(data, x)
    paths = []
    for k in (1, 2):
        p = tmp_path / f"u{k}.json"
        _shard_part(data, k, p)
        paths.append(str(p))
    rc, _, err = run(capsys, "merge", *paths, "--no-config", "--min-certified-accuracy", "0.1=0.5")
    assert rc == 2 and "needs labels" in err
    assert run(capsys, "merge", *paths, "--no-config", "--max-lipschitz", "2")[0] == 0


@pytest.mark.parametrize(
    "gate", [["--min-certified-accuracy", "0.5=0.99"], ["--min-clean-accuracy", "0.99"], ["--max-lipschitz", "0.5"]]
)
def test_gate_flags_on_a_shard_are_refused(capsys, tmp_path, gate) -> None:
    """was: a part dropped its gate flags and exited 0 (gates apply only at `lipgraph merge`)."""
    out = tmp_path / "p.json"
    rc, _, err = _certify(capsys, "--no-config", "--batch-size", "32", "--shard", "1/2", *gate, "-o", str(out))
    assert rc == 2 and "lipgraph merge" in err and not out.exists()


def test_partial_report_is_no_baseline(capsys, parts) -> None:
    rc, _, err = _certify(capsys, "--no-config", "--baseline", str(parts[0]))
    assert rc == 2 and "certify JSON report" in err


def test_shard_without_samples_is_loud(capsys, tmp_path) -> None:
    rc, _, err = _certify(capsys, "--no-config", "--batch-size", "64", "--shard", "2/2", "-o", str(tmp_path / "p.json"))
    assert rc == 2 and "holds no batch" in err and "use at most 1 part," in err


def test_merge_refuses_parts_of_other_data(capsys, tmp_path) -> None:
    """was: part 1 of A.npz and part 2 of B.npz (same size) merged into a report of neither, exit 0."""
    with np.load(DATA) as d:
        x, y = d["x"], d["y"]
    paths = []
    for k, (name, rows) in enumerate((("A.npz", slice(0, 120)), ("B.npz", slice(120, 240))), start=1):
        np.savez(tmp_path / name, x=x[rows], y=y[rows])
        p = tmp_path / f"p{k}.json"
        _shard_part(tmp_path / name, k, p)
        paths.append(str(p))
    rc, _, err = run(capsys, "merge", *paths, "--no-config", "--min-clean-accuracy", "0.5")
    assert rc == 2 and "other data" in err and "A.npz" in err
