"""Review: the data readers (lipgraph.stream, lipgraph.data) against crafted files.

The first checks held from the start; those under "holes" reproduced holes of the memory-mapped
reader (deflated members read from two threads, label shards paired by name order, negative or overflowing
header sizes, truncated Fortran files, 0-d labels, stored members shorter than their header) and fail on it.
"""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lipgraph.data import fit_labels
from lipgraph.errors import DataError
from lipgraph.stream import open_data

RNG = np.random.default_rng(11)
X = RNG.standard_normal((40, 6)).astype(np.float32)


def _all(path: Path, n_features: int = 6) -> np.ndarray:
    ds = open_data(path)
    v = ds.x.fitted((None, n_features), np.dtype(np.float32), "data")
    return v[0 : len(v)]


def _npy_with_header(shape: tuple[int, ...], body: bytes, fortran: bool = False) -> bytes:
    h = {"descr": "<f4", "fortran_order": fortran, "shape": shape}
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, h)
    return f.getvalue() + body


# ------------------------------------------------------------------------------------ what holds


def test_header_claiming_more_rows_than_the_file_holds(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    p.write_bytes(_npy_with_header((100, 6), X.tobytes()))
    with pytest.raises(DataError, match="truncated"):
        open_data(p)


def test_truncated_c_order_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-7])
    with pytest.raises(DataError, match="truncated"):
        open_data(tmp_path / "x.npy")


@pytest.mark.parametrize("kind", ["big-endian", "fortran", "fortran npz", "deflated", "zip64 stored", "zip64 deflated"])
def test_layouts_read_the_same_values(kind: str, tmp_path: Path) -> None:
    p = tmp_path / ("x.npy" if kind in ("big-endian", "fortran") else "x.npz")
    if kind == "big-endian":
        np.save(p, X.astype(">f4"))
    elif kind == "fortran":
        np.save(p, np.asfortranarray(X))
    elif kind == "fortran npz":
        np.savez(p, x=np.asfortranarray(X))
    elif kind == "deflated":
        np.savez_compressed(p, x=X)
    else:
        mode = zipfile.ZIP_STORED if kind == "zip64 stored" else zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(p, "w", mode) as z, z.open("x.npy", "w", force_zip64=True) as f:
            np.save(f, X)
    np.testing.assert_array_equal(_all(p), X)


def test_duplicate_member_reads_what_numpy_reads(tmp_path: Path) -> None:
    p = tmp_path / "dup.npz"
    with pytest.warns(UserWarning), zipfile.ZipFile(p, "w") as z:
        for arr in (X * 0, X):
            f = io.BytesIO()
            np.save(f, arr)
            z.writestr("x.npy", f.getvalue())
    np.testing.assert_array_equal(_all(p), np.load(p)["x"])


def test_object_dtype_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects"):
        open_data(tmp_path / "x.npy")


@pytest.mark.parametrize("shape", [(40, 0), (0, 6)])
def test_zero_sizes_refused(shape: tuple[int, ...], tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    p.write_bytes(_npy_with_header(shape, b""))
    with pytest.raises(DataError):
        _all(p)


@pytest.mark.parametrize("second", ["float64", "3 features"])
def test_shards_of_different_dtype_or_shape_refused(second: str, tmp_path: Path) -> None:
    np.save(tmp_path / "x_000.npy", X[:20])
    np.save(tmp_path / "x_001.npy", X[20:].astype(np.float64) if second == "float64" else X[20:, :3])
    with pytest.raises(DataError, match="differ"):
        open_data(tmp_path)


@pytest.mark.parametrize(
    "labels,ok",
    [
        (np.array([0, 1, 2]), True),
        (np.array([0.0, 1.0, 2.0]), True),
        (np.array([[0], [1], [2]]), True),
        (np.array([0, 1, 3]), False),
        (np.array([0, -1, 2]), False),
        (np.array([0.0, 1.5, 2.0]), False),
        (np.array([0.0, np.nan, 2.0]), False),
        (np.array([0.0, 1e20, 2.0]), False),
        (np.array([0, 2**64 - 1, 2], dtype=np.uint64), False),
        (np.array([0j, 1, 2]), False),
        (np.array([0, 1]), False),
    ],
)
def test_labels(labels: np.ndarray, ok: bool) -> None:
    if ok:
        np.testing.assert_array_equal(fit_labels(labels, 3, 3), [0, 1, 2])
    else:
        with pytest.raises(DataError):
            fit_labels(labels, 3, 3)


# ------------------------------------------------------------------------------------ holes (stream.py)


def test_deflated_npz_read_from_two_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic interleaving: thread A seeks to its rows, thread B then reads other rows, A reads."""
    p = tmp_path / "x.npz"
    x = RNG.standard_normal((400, 6)).astype(np.float32)
    np.savez_compressed(p, x=x)
    ds = open_data(p)
    a_seeked, b_done = threading.Event(), threading.Event()
    orig_seek = zipfile.ZipExtFile.seek
    a_ident: list[int] = []

    def seek(self: zipfile.ZipExtFile, *args: object) -> int:
        out = orig_seek(self, *args)
        if a_ident and threading.get_ident() == a_ident[0] and not a_seeked.is_set():
            a_seeked.set()
            b_done.wait(10)
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "seek", seek)
    got: dict[str, np.ndarray] = {}

    def reader_a() -> None:
        a_ident.append(threading.get_ident())
        got["a"] = ds.x[10:20]

    def reader_b() -> None:
        a_seeked.wait(10)
        try:
            got["b"] = ds.x[300:310]
        finally:
            b_done.set()

    ta, tb = threading.Thread(target=reader_a), threading.Thread(target=reader_b)
    ta.start()
    tb.start()
    ta.join(20)
    tb.join(20)
    np.testing.assert_array_equal(got.get("a"), x[10:20])
    np.testing.assert_array_equal(got.get("b"), x[300:310])


def _shards(d: Path, x: np.ndarray, y: np.ndarray, x_names: list[str], y_names: list[str]) -> None:
    for i, name in enumerate(x_names):
        np.save(d / name, x[10 * i : 10 * i + 10])
    for name in y_names:
        i = int(name.split("_")[1].split(".")[0])
        np.save(d / name, y[10 * i : 10 * i + 10])



def test_label_shards_paired_by_index_not_name_order(tmp_path: Path) -> None:
    x = np.concatenate([X] * 3)[:110]
    y = np.arange(110) % 7
    _shards(tmp_path, x, y, [f"x_{i:03d}.npy" for i in range(11)], [f"y_{i}.npy" for i in range(11)])
    ds = open_data(tmp_path)  # y_10 sorts before y_2: labels would belong to other inputs
    np.testing.assert_array_equal(ds.y, y)



def test_missing_label_shard_refused(tmp_path: Path) -> None:
    y = np.arange(40) % 7
    _shards(tmp_path, X, y, [f"x_{i:03d}.npy" for i in range(3)], ["y_000.npy", "y_002.npy", "y_003.npy"])
    with pytest.raises(DataError):  # y_001 is missing, y_003 has no inputs: 30 labels, none for x_001's rows
        open_data(tmp_path)



def test_negative_dimension_in_header_refused(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    p.write_bytes(_npy_with_header((3, -6), X.tobytes()))
    with pytest.raises(DataError):
        open_data(p)



def test_header_shape_overflowing_int64(tmp_path: Path) -> None:
    p = tmp_path / "x.npy"
    p.write_bytes(_npy_with_header((3, 2**32, 2**32), X.tobytes()))
    with pytest.raises(DataError):
        _all(p)



def test_truncated_fortran_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.asfortranarray(X))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-7])
    with pytest.raises(DataError):
        open_data(tmp_path / "x.npy")



def test_scalar_labels_in_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=X, y=np.int64(3))
    with pytest.raises(DataError):
        open_data(tmp_path / "d.npz")


def test_stored_npz_member_shorter_than_its_header(tmp_path: Path) -> None:
    p = tmp_path / "liar.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as z:
        z.writestr("x.npy", _npy_with_header((100, 6), X.tobytes()))  # 40 rows stored, 100 claimed
        f = io.BytesIO()
        np.save(f, np.ones((200, 6), np.float32))
        z.writestr("pad.npy", f.getvalue())
    with pytest.raises(ValueError):
        np.load(p)["x"]
    with pytest.raises(DataError):
        _all(p)
