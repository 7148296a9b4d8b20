"""Review: `lipgraph certify MODEL --bound bound.json` against crafted models and hand-edited bound files.

A bound file is the user's claim about *this* model: one made for other weights (external data swapped
next to an unchanged .onnx), by another lipgraph, or damaged (NaN, negative, wrong types) must be refused
with exit 2 and one line, never turned into radii.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from lipgraph.cli import main
from lipgraph.loader import load_model
from tests.helpers.onnx_oracle import make_model

RNG = np.random.default_rng(7)
W = (RNG.standard_normal((64, 10)) * 0.01).astype(np.float32)  # 2.5 KiB: stored as external data below


def _cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def _external_model(folder: Path, w: np.ndarray) -> Path:
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"], name="fc")]
    path = folder / "model.onnx"
    onnx.save(
        make_model(nodes, [("x", ["N", 64])], ["logits"], {"W": w}),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    return path


def test_digest_covers_external_weights(tmp_path: Path) -> None:
    path = _external_model(tmp_path, W)
    _, before = load_model(path)
    onnx_bytes = path.read_bytes()
    (tmp_path / "w.bin").write_bytes((W * 100).astype(np.float32).tobytes())  # same size, other weights
    _, after = load_model(path)
    assert path.read_bytes() == onnx_bytes  # the .onnx file itself is unchanged
    assert before != after


def test_bound_for_other_external_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hole: the digest covered only the .onnx bytes, so a bound for weights W certified 100*W."""
    path = _external_model(tmp_path, W)
    bound = tmp_path / "bound.json"
    assert _cli(capsys, "bound", path, "-o", bound, "-q")[0] == 0
    w2 = (W * 100).astype(np.float32)
    (tmp_path / "w.bin").write_bytes(w2.tobytes())
    x = RNG.standard_normal((20, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    out = tmp_path / "c.json"
    rc, err = _cli(
        capsys,
        "certify",
        path,
        "--data",
        tmp_path / "d.npz",
        "--bound",
        bound,
        "--per-sample",
        "--format",
        "json",
        "-o",
        out,
        "-q",
        "--exit-zero",
    )
    if rc == 0:  # show the unsound certificate: a point inside a certified ball where ONNX Runtime flips
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rows = json.loads(out.read_text())["per_sample"]
        for r in rows:
            i, c, rad = r["index"], r["prediction"], r["radius"]
            z = x[i] @ w2
            j = int(np.argsort(z)[-2])
            d = (w2[:, j] - w2[:, c]).astype(np.float64)
            step = 0.99 * rad * d / np.linalg.norm(d)
            flipped = sess.run(None, {"x": (x[i] + step).astype(np.float32)[None]})[0].argmax() != c
            assert not flipped, f"sample {i}: certified radius {rad} but the prediction flips inside it"
    assert rc == 2, "a bound for other external weights was accepted"
    assert "another model" in _one_error_line(err)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("mlp")
    a = RNG.standard_normal((6, 5)).astype(np.float32)
    b = RNG.standard_normal((5, 3)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("MatMul", ["r", "B"], ["logits"], name="fc2"),
    ]
    path = tmp / "m.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 6])], ["logits"], {"A": a, "B": b}), str(path))
    assert main(["bound", str(path), "-o", str(tmp / "b.json"), "-q"]) == 0
    np.savez(tmp / "d.npz", x=RNG.standard_normal((10, 6)).astype(np.float32))
    return path, json.loads((tmp / "b.json").read_text())


def _rows(key: str, value: Any):  # noqa: ANN202 - an edit of every node row
    return lambda d: [r.__setitem__(key, value) for r in d["nodes"]]


EDITS = {
    "bound true": lambda d: d.__setitem__("lipschitz_bound", True),
    "bound beyond float": lambda d: d.__setitem__("lipschitz_bound", 10**400),
    "cumulative NaN": _rows("cumulative", float("nan")),
    "cumulative negative": _rows("cumulative", -1.0),
    "cumulative inf": _rows("cumulative", float("inf")),
    "cumulative string": _rows("cumulative", "1"),
    "cumulative false": _rows("cumulative", False),
    "row name a list": lambda d: d["nodes"][0].__setitem__("name", [1]),
    "row not an object": lambda d: d["nodes"].append(5),
    "input_shape int": lambda d: d["meta"].__setitem__("input_shape", 5),
    "input_shape object": lambda d: d["meta"].__setitem__("input_shape", {"a": 1}),
    "input_shape negative": lambda d: d["meta"].__setitem__("input_shape", [1, -6]),
    "input number": lambda d: d["meta"].__setitem__("input", 5),
    "warnings int": lambda d: d.__setitem__("warnings", 5),
    "warnings string": lambda d: d.__setitem__("warnings", "abc"),
    "sha256 missing": lambda d: d["meta"].pop("model_sha256"),
    "other lipgraph": lambda d: d["meta"]["versions"].__setitem__("lipgraph", "0.0.0-old"),
    "no versions": lambda d: d["meta"].pop("versions"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_damaged_bound_file_is_one_error_line(
    edit: str, mlp: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, doc = mlp
    d = copy.deepcopy(doc)
    EDITS[edit](d)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps(d))
    rc, err = _cli(capsys, "certify", path, "--data", path.parent / "d.npz", "--bound", bad, "-q")
    assert rc == 2, (edit, err)
    assert len(_one_error_line(err)) < 300


def test_unedited_file_still_certifies(
    mlp: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the near-miss of the edits above: the checks must not refuse what `lipgraph bound` writes
    path, doc = mlp
    good = tmp_path / "b.json"
    good.write_text(json.dumps(doc))
    rc, err = _cli(capsys, "certify", path, "--data", path.parent / "d.npz", "--bound", good, "-q", "--exit-zero")
    assert rc == 0, err
