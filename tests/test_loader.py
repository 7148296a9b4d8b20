"""The loader: unreadable files and untrusted external data become one clear ModelLoadError line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.errors import ModelLoadError
from lipgraph.loader import load_model
from tests.helpers.onnx_oracle import make_model, one_node, spectral

RNG = np.random.default_rng(0)
W = RNG.standard_normal((64, 32)).astype(np.float32)  # 8 KiB: above onnx's external-data threshold


def _gemm_model() -> onnx.ModelProto:
    return one_node("Gemm", ["N", 32], {"W": W})


def _save_external(model: onnx.ModelProto, folder: Path, location: str = "weights.bin") -> Path:
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path


def _rewrite_location(path: Path, location: str) -> None:
    """Point every external tensor at ``location`` (what a hostile or careless file would do)."""
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path.write_bytes(m.SerializeToString())


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


def test_valid_external_data_model_loads(tmp_path: Path) -> None:
    path = _save_external(_gemm_model(), tmp_path)
    assert (tmp_path / "weights.bin").stat().st_size >= W.nbytes
    model, sha = load_model(path)
    assert len(sha) == 64
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), W)
    # The analysis sees the real weights: the bound is the exact norm of W (Gemm without transB: x @ W).
    a = analyze(path)
    assert spectral(W) <= a.bound <= spectral(W) * (1 + 1e-6)


def test_external_data_in_subfolder_of_model_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = _save_external(_gemm_model(), tmp_path, location="data/w.bin")
    assert (tmp_path / "data" / "w.bin").is_file()
    load_model(path)


def test_absolute_external_path_refused(tmp_path: Path) -> None:
    path = _save_external(_gemm_model(), tmp_path)
    _rewrite_location(path, str((tmp_path / "weights.bin").resolve()))  # exists, but absolute
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert "absolute" in _one_line(exc)


def test_dotdot_escape_refused(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    _save_external(_gemm_model(), tmp_path)  # writes tmp_path/weights.bin, a real file outside inner/
    path = inner / "model.onnx"
    (tmp_path / "model.onnx").rename(path)
    _rewrite_location(path, "../weights.bin")
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert "outside" in _one_line(exc)


def test_symlink_escape_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    inner = tmp_path / "inner"
    outside.mkdir()
    inner.mkdir()
    _save_external(_gemm_model(), outside)
    path = inner / "model.onnx"
    (outside / "model.onnx").rename(path)
    os.symlink(outside / "weights.bin", inner / "weights.bin")  # looks local, resolves outside
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert "outside" in _one_line(exc)


def test_missing_external_file_refused(tmp_path: Path) -> None:
    path = _save_external(_gemm_model(), tmp_path)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert "missing" in _one_line(exc)


def test_truncated_external_file_refused(tmp_path: Path) -> None:
    path = _save_external(_gemm_model(), tmp_path)
    data = (tmp_path / "weights.bin").read_bytes()
    (tmp_path / "weights.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    _one_line(exc)


@pytest.mark.parametrize("seed", range(6))
def test_random_bytes_refused(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(ModelLoadError) as exc:
        analyze(path)
    _one_line(exc)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_model_refused(tmp_path: Path, keep: float) -> None:
    # A model with inline weights, cut short: never a crash, never a silently different model.
    raw = _gemm_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(ModelLoadError) as exc:
        analyze(path)
    _one_line(exc)


def test_empty_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as exc:
        load_model(path)
    assert "empty" in _one_line(exc)


def test_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path)
    assert "directory" in _one_line(exc)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as exc:
        load_model(tmp_path / "nope.onnx")
    assert "does not exist" in _one_line(exc)


def test_unknown_opset_refused() -> None:
    model = one_node("Relu", [1, 3], opset=99)
    with pytest.raises(ModelLoadError) as exc:
        analyze(model)
    assert "99" in _one_line(exc)


def _two_input_model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    # y = x @ A + z @ B. Certifying x holds z fixed (L = 0), so the bound is ||A||; and vice versa.
    a = RNG.standard_normal((3, 2)).astype(np.float32)
    b = 5.0 * RNG.standard_normal((4, 2)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("MatMul", ["z", "B"], ["zb"]),
        helper.make_node("Add", ["xa", "zb"], ["y"]),
    ]
    return make_model(nodes, [("x", [1, 3]), ("z", [1, 4])], ["y"], {"A": a, "B": b}), a, b


def test_several_float_inputs_need_input_flag() -> None:
    model, _, _ = _two_input_model()
    with pytest.raises(ModelLoadError) as exc:
        analyze(model)
    msg = _one_line(exc)
    assert "x, z" in msg and "--input" in msg


@pytest.mark.parametrize("name, mat", [("x", 1), ("z", 2)])
def test_input_flag_chooses_the_certified_input(name: str, mat: int) -> None:
    model, a, b = _two_input_model()
    want = spectral(a if mat == 1 else b)
    got = analyze(model, input_name=name)
    assert got.input_name == name
    assert want <= got.bound <= want * (1 + 1e-6)


def test_bad_input_name_lists_candidates() -> None:
    model, _, _ = _two_input_model()
    with pytest.raises(ModelLoadError) as exc:
        analyze(model, input_name="nope")
    msg = _one_line(exc)
    assert "nope" in msg and "x" in msg and "z" in msg


def test_initializer_listed_as_input_is_not_a_candidate() -> None:
    # Old exporters list every initializer among the graph inputs too.
    model = _gemm_model()
    w_vi = helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, list(W.shape))
    model.graph.input.append(w_vi)
    a = analyze(model)
    assert a.input_name == "x"
    assert spectral(W) <= a.bound <= spectral(W) * (1 + 1e-6)


def test_modelproto_with_unloaded_external_data_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A ModelProto handed to analyze() with external references must not be read relative to the cwd
    # (the path check lives in the loader, which a ModelProto never went through).
    path = _save_external(_gemm_model(), tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    monkeypatch.chdir(tmp_path)  # where 'weights.bin' would resolve
    with pytest.raises(ModelLoadError) as exc:
        analyze(proto)
    assert "external data" in _one_line(exc)
    # Loaded properly, the same model is fine.
    assert analyze(onnx.load(str(path))).bound == pytest.approx(spectral(W), rel=1e-6)
