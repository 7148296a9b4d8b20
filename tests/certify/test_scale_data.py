"""Issue 13: streamed data sources, `certify --bound`, `certify --shard K/N` + `lipgraph merge`.

Real parts: a digits MLP exported by torch's legacy exporter (conftest) and a small CNN exported by
the dynamo exporter with dynamic spatial size, run by ONNX Runtime through the CLI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lipgraph.cli import main
from lipgraph.stream import Shard, open_data

torch = pytest.importorskip("torch")


def _cli(capsys, *args: str) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------- sources


def _write_sources(tmp: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    np.savez(tmp / "stored.npz", x=x, y=y)
    np.savez_compressed(tmp / "deflated.npz", x=x, y=y)
    np.save(tmp / "plain.npy", x)
    d = tmp / "shards"
    d.mkdir()
    for i, (a, b) in enumerate([(0, 150), (150, 151), (151, len(x))]):
        np.save(d / f"x_{i:03d}.npy", x[a:b])
        np.save(d / f"y_{i:03d}.npy", y[a:b])
    return {"stored": tmp / "stored.npz", "deflated": tmp / "deflated.npz", "npy": tmp / "plain.npy", "dir": d}


def test_every_source_reads_the_same_rows_and_shards_partition(tmp_path: Path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3, 4)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    for name, path in _write_sources(tmp_path, x, y).items():
        ds = open_data(path)
        assert len(ds.x) == 300 and ds.x.shape == (300, 3, 4), name
        for a, b in [(0, 7), (140, 160), (299, 300), (0, 300)]:
            np.testing.assert_array_equal(ds.x[a:b], x[a:b], err_msg=name)
        if name != "npy":
            np.testing.assert_array_equal(ds.y, y)
        seen = []
        for k in (1, 2, 3, 4):
            part = open_data(path, shard=Shard(k, 4), block=32)
            idx = part.x.global_indices()
            np.testing.assert_array_equal(part.x[0 : len(part.x)], x[idx], err_msg=name)
            if part.y is not None:
                np.testing.assert_array_equal(part.y, y[idx])
            seen.append(idx)
        np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(300))
    assert open_data(tmp_path / "stored.npz", limit=10).x.shape[0] == 10


@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "1", ""])
def test_bad_shard_specs_are_refused(text):
    from lipgraph.errors import DataError

    with pytest.raises(DataError):
        Shard.parse(text)


def test_streamed_formats_certify_like_the_in_memory_api(digits_mlp, tmp_path, capsys):
    from lipgraph.certify import certify

    ref = certify(str(digits_mlp.onnx_path), digits_mlp.x, digits_mlp.y, batch_size=64)
    for name, path in _write_sources(tmp_path, digits_mlp.x, digits_mlp.y).items():
        if name == "npy":
            continue  # no labels in a bare .npy
        out = tmp_path / f"{name}.json"
        rc, err = _cli(
            capsys,
            "certify",
            digits_mlp.onnx_path,
            "--data",
            path,
            "--format",
            "json",
            "-o",
            out,
            "--per-sample",
            "--batch-size",
            "64",
            "-q",
        )
        assert rc == 0, err
        rep = _report(out)
        assert rep["certified_accuracy"] == ref.certified_accuracy
        assert [r["radius"] for r in rep["per_sample"]] == [float(v) for v in ref.radii]


# ---------------------------------------------------------------------------------------- shards + merge


def test_four_shards_merged_equal_the_single_run_bit_for_bit(digits_mlp, tmp_path, capsys):
    data = digits_mlp.npz_path
    single = tmp_path / "single.json"
    gate = ["--min-certified-accuracy", "0.1=0.99"]  # fails: both must exit 1
    rc, err = _cli(
        capsys,
        "certify",
        digits_mlp.onnx_path,
        "--data",
        data,
        "--format",
        "json",
        "-o",
        single,
        "--per-sample",
        "--batch-size",
        "32",
        "--tight-pairs",
        "all",  # what every --shard part uses (auto would tighten the pairs of the part's own samples)
        "-q",
        *gate,
    )
    assert rc == 1, err
    parts = []
    for k in range(1, 5):
        part = tmp_path / f"part{k}.json"
        rc, err = _cli(
            capsys,
            "certify",
            digits_mlp.onnx_path,
            "--data",
            data,
            "--shard",
            f"{k}/4",
            "--batch-size",
            "32",
            "-o",
            part,
            "-q",
        )
        assert rc == 0, err
        parts.append(part)
    merged = tmp_path / "merged.json"
    rc, err = _cli(capsys, "merge", *reversed(parts), "--format", "json", "-o", merged, "--per-sample", *gate)
    assert rc == 1, err
    a, b = _report(single), _report(merged)
    for key in (
        "lipschitz_bound",
        "samples",
        "clean_accuracy",
        "certified_accuracy",
        "median_radius",
        "mean_radius",
        "radius_method",
        "passed",
        "gates",
        "per_sample",
    ):
        assert a[key] == b[key], key
    assert b["meta"]["shards"]["count"] == 4


def test_merge_refuses_incomplete_or_foreign_parts(digits_mlp, tmp_path, capsys):
    parts = []
    for k in (1, 2):
        part = tmp_path / f"p{k}.json"
        assert (
            _cli(
                capsys,
                "certify",
                digits_mlp.onnx_path,
                "--data",
                digits_mlp.npz_path,
                "--shard",
                f"{k}/3",
                "-o",
                part,
                "-q",
            )[0]
            == 0
        )
        parts.append(part)
    for args, words in [
        (parts, "missing [3]"),
        ([parts[0], parts[0], parts[1]], "repeated [1]"),
        ([digits_mlp.npz_path], "not"),
    ]:
        out = tmp_path / "m.json"
        rc, err = _cli(capsys, "merge", *args, "-o", out)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    doc = _report(parts[1])
    doc["meta"]["model_sha256"] = "0" * 64
    (tmp_path / "p3.json").write_text(json.dumps(dict(doc, shard=[3, 3])))
    rc, err = _cli(capsys, "merge", *parts, tmp_path / "p3.json")
    assert rc == 2 and "different models" in err


# ---------------------------------------------------------------------------------------- bound reuse


class _SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _export_cnn(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = _SmallCNN().eval()
    x = torch.randn(2, 1, 8, 8)
    dims = {"x": {0: torch.export.Dim("n", min=1), 2: torch.export.Dim("h", min=4), 3: torch.export.Dim("w", min=4)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"], dynamic_shapes=dims
        )


def test_bound_once_certify_anywhere(tmp_path, capsys):
    model, other = tmp_path / "cnn.onnx", tmp_path / "other.onnx"
    _export_cnn(model, 0)
    _export_cnn(other, 1)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "d8.npz", x=rng.random((40, 1, 8, 8), dtype=np.float32), y=rng.integers(0, 3, 40))
    np.savez(tmp_path / "d10.npz", x=rng.random((5, 1, 10, 10), dtype=np.float32))
    bound = tmp_path / "bound.json"
    rc, err = _cli(capsys, "bound", model, "--input-shape", "1x1x8x8", "-o", bound)
    assert rc == 0, err
    assert _report(bound)["meta"]["input_shape"] == [1, 1, 8, 8]  # -o *.json writes JSON
    fresh, reused = tmp_path / "fresh.json", tmp_path / "reused.json"
    assert _cli(capsys, "certify", model, "--data", tmp_path / "d8.npz", "--format", "json", "-o", fresh, "-q")[0] == 0
    rc, err = _cli(
        capsys,
        "certify",
        model,
        "--data",
        tmp_path / "d8.npz",
        "--bound",
        bound,
        "--format",
        "json",
        "-o",
        reused,
        "-q",
    )
    assert rc == 0, err
    a, b = _report(fresh), _report(reused)
    assert a["lipschitz_bound"] == b["lipschitz_bound"] and a["certified_accuracy"] == b["certified_accuracy"]
    assert b["meta"]["bound_file"] == str(bound)
    rc, err = _cli(capsys, "certify", other, "--data", tmp_path / "d8.npz", "--bound", bound, "-q")
    assert rc == 2 and "another model" in err and len(err.strip().splitlines()) == 1
    rc, err = _cli(capsys, "certify", model, "--data", tmp_path / "d10.npz", "--bound", bound, "-q")
    assert rc == 2 and "1x8x8" in err and "1x10x10" in err
    text_bound = tmp_path / "bound.txt"
    assert _cli(capsys, "bound", model, "--input-shape", "1x1x8x8", "-o", text_bound)[0] == 0
    rc, err = _cli(capsys, "certify", model, "--data", tmp_path / "d8.npz", "--bound", text_bound, "-q")
    assert rc == 2 and "not a JSON bound report" in err
