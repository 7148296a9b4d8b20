"""Inference and data handling: fixed-batch padding, a missing channel axis (NCHW and NHWC), dtype casts,
and every bad-data case through the CLI (exit 2, one line, no report file)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.certify import certify
from lipgraph.cli import main


def _conv_free_image_model(in_shape: list, k: int = 3, seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """Flatten -> Gemm -> Relu -> Gemm over an image-shaped input (fixed or symbolic batch)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod([s for s in in_shape[1:]]))
    w1, w2 = rng.normal(size=(8, d)) / np.sqrt(d), rng.normal(size=(k, 8))
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1"], ["g"], transB=1),
             helper.make_node("Relu", ["g"], ["h"]),
             helper.make_node("Gemm", ["h", "w2"], ["logits"], transB=1)]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [in_shape[0], k])],
                          [numpy_helper.from_array(w1.astype(np.float32), "w1"),
                           numpy_helper.from_array(w2.astype(np.float32), "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w1


def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_model_pads_the_last_batch(batch: int) -> None:
    m, _ = _conv_free_image_model([batch, 1, 4, 4])
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(11, 1, 4, 4)).astype(np.float32)
    cert = certify(m, x, eps=[0.1], batch_size=3)
    assert cert.samples == 11
    assert cert.meta["batch_size"] == batch
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": np.repeat(x[i:i + 1], batch, axis=0)})[0][:1] for i in range(11)])
    np.testing.assert_array_equal(cert.predictions, ref.argmax(1))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_missing_channel_axis_is_added_where_the_model_expects_it(layout: str) -> None:
    shape = ["N", 1, 5, 5] if layout == "nchw" else ["N", 5, 5, 1]
    m, _ = _conv_free_image_model(shape)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(7, 5, 5)).astype(np.uint8)  # uint8 pixels, not rescaled
    cert = certify(m, x, eps=[0.1])
    xr = x.astype(np.float32).reshape(7, 1, 5, 5) if layout == "nchw" else x.astype(np.float32)[..., None]
    np.testing.assert_array_equal(cert.predictions, _ort(m, xr).argmax(1))
    assert cert.meta["data"]["input_max"] == float(x.max())  # no silent rescaling to [0, 1]


def test_providers_are_recorded_and_unknown_ones_refused() -> None:
    m, _ = _conv_free_image_model(["N", 1, 2, 2])
    x = np.zeros((2, 1, 2, 2), np.float32)
    cert = certify(m, x, providers="cpu")
    assert cert.meta["provider"] == "CPUExecutionProvider"
    from lipgraph.errors import LipgraphError

    with pytest.raises(LipgraphError, match="not available"):
        certify(m, x, providers="nosuchprovider")


# ---------------------------------------------------------------------- bad data through the CLI
@pytest.fixture
def model_file(tmp_path):
    m, _ = _conv_free_image_model(["N", 1, 4, 4])
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    return p


def _bad_cases(tmp_path):
    ok_x = np.zeros((5, 1, 4, 4), np.float32)
    nan_x = ok_x.copy()
    nan_x[2, 0, 1, 1] = np.nan
    cases = {
        "nan": {"x": nan_x},
        "inf": {"x": np.full((5, 1, 4, 4), np.inf, np.float32)},
        "shape": {"x": np.zeros((5, 1, 3, 4), np.float32)},
        "label_range": {"x": ok_x, "y": np.array([0, 1, 2, 3, 0])},
        "negative_label": {"x": ok_x, "y": np.array([0, -1, 2, 1, 0])},
        "length": {"x": ok_x, "y": np.array([0, 1, 2])},
        "zero": {"x": np.zeros((0, 1, 4, 4), np.float32)},
        "no_x_key": {"foo": ok_x},
    }
    paths = {}
    for name, arrays in cases.items():
        p = tmp_path / f"{name}.npz"
        np.savez(p, **arrays)
        paths[name] = p
    obj = tmp_path / "object.npz"
    np.savez(obj, x=np.array([np.zeros(3), "a"], dtype=object))
    paths["object"] = obj
    notnpz = tmp_path / "plain.npz"
    notnpz.write_text("not a zip")
    paths["not_npz"] = notnpz
    paths["directory"] = tmp_path / "adir"
    paths["directory"].mkdir()
    paths["missing"] = tmp_path / "missing.npz"
    return paths


def test_bad_data_exits_2_with_one_line_and_no_report(tmp_path, model_file, capsys) -> None:
    expect = {
        "nan": "NaN", "inf": "NaN or Inf", "shape": "shape", "label_range": "outside",
        "negative_label": "outside", "length": "lengths must match", "zero": "zero samples",
        "no_x_key": "no inputs", "object": "object", "not_npz": "not an .npz", "directory": "directory",
        "missing": "does not exist",
    }
    for name, path in _bad_cases(tmp_path).items():
        out = tmp_path / f"report_{name}.json"
        rc = main(["certify", str(model_file), "--data", str(path), "--format", "json", "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert expect[name] in lines[0], (name, lines[0])
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".report_{name}.json*")), name


def test_limit_and_labels_optional(tmp_path, model_file, capsys) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, images=np.random.default_rng(0).uniform(size=(30, 4, 4)).astype(np.float32))
    rc = main(["certify", str(model_file), "--data", str(p), "--limit", "7", "--format", "json", "--per-sample"])
    import json

    d = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert d["samples"] == 7 and len(d["per_sample"]) == 7
    assert d["clean_accuracy"] is None and all(s["label"] is None for s in d["per_sample"])


def test_progress_only_on_a_terminal(monkeypatch, capsys) -> None:
    import sys

    from lipgraph.inference import stderr_progress

    monkeypatch.delenv("CI", raising=False)  # in CI there is no bar at all (tests/ci/test_progress.py)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert stderr_progress() is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert stderr_progress(quiet=True) is None
    bar = stderr_progress()
    assert bar is not None
    bar(10, 10)
    err = capsys.readouterr().err
    assert "10/10" in err and "inference" in err


def test_unsupported_model_exits_2_and_writes_nothing(tmp_path, capsys) -> None:
    """The bound runs beside inference; its refusal still ends the run with exit 2 and no report."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "x2"], ["sq"]),  # bilinear in the input: no global bound
             helper.make_node("MatMul", ["sq", "w"], ["logits"])]
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
         helper.make_node("MatMul", ["xt", "x"], ["x2"]), *nodes], "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    mp = tmp_path / "bad.onnx"
    onnx.save(m, str(mp))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((600, 4), np.float32))
    out = tmp_path / "r.json"
    rc = main(["certify", str(mp), "--data", str(data), "--batch-size", "1", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "without a sound Lipschitz bound" in err and "MatMul" in err
    assert not out.exists()


def test_api_with_and_without_a_precomputed_analysis(model_file) -> None:
    import hashlib

    import lipgraph
    from lipgraph.analyze import analyze

    x = np.random.default_rng(3).uniform(size=(25, 1, 4, 4)).astype(np.float32)
    y = np.arange(25) % 3
    a = lipgraph.certify(str(model_file), x, y, eps=[0.01, 0.05])
    b = lipgraph.certify(str(model_file), x, y, eps=[0.01, 0.05], analysis=analyze(str(model_file)))
    assert isinstance(a, lipgraph.Certificate)
    np.testing.assert_array_equal(a.radii, b.radii)
    assert a.to_json()["certified_accuracy"] == b.to_json()["certified_accuracy"]
    assert a.meta["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert a.meta["model"] == str(model_file)
