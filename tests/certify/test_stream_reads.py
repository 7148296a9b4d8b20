"""Issue 13: streamed data is read batch by batch with positional reads, never memory-mapped.

A memory map put the file's touched pages in the process's resident set until some stage let go of them, so
the peak memory of a streamed run followed the file size and the threads' timing. These tests pin the
mechanism (no mapping of the data file exists while certify reads it; file pages do not stay resident
whatever the readers do) and the exact bytes (byte order, Fortran order, stored and compressed members).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from lipgraph.cli import main
from lipgraph.errors import DataError
from lipgraph.stream import StreamedInputs, open_data

_PROC = Path("/proc/self/status")
needs_proc = pytest.mark.skipif(not _PROC.exists() or not Path("/proc/self/maps").exists(), reason="needs /proc")


def _rss_file_kib() -> int:
    for line in _PROC.read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def _mapped(path: Path) -> bool:
    real = str(path.resolve())
    return any(line.rstrip().endswith(real) for line in Path("/proc/self/maps").read_text().splitlines())


def _read_from_six_threads(ds, x: np.ndarray, block: int) -> list[str]:
    """Six threads read staggered blocks of ``ds.x`` at once; the blocks (or errors) that differ from ``x``."""
    bad: list[str] = []

    def work(k: int) -> None:
        try:
            for start in range(k * 37 % block, len(x), block):
                if ds.x.read(start, start + block).tobytes() != x[start : start + block].tobytes():
                    bad.append(f"thread {k} rows {start}")
        except Exception as exc:  # noqa: BLE001 - any failure of a reader counts
            bad.append(f"thread {k}: {exc!r}")

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return bad


# ------------------------------------------------------------------------------------------ exact bytes


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["<f4", ">f4", ">f8", "<i2", "u1"])
def test_every_source_gives_the_files_exact_bytes(tmp_path: Path, order: str, dtype: str):
    rng = np.random.default_rng(1)
    x = np.asarray(rng.standard_normal((97, 3, 5, 2)) * 50, dtype=dtype, order=order)
    x.flat[7] = np.finfo(np.float32).tiny / 8 if x.dtype.kind == "f" else x.flat[7]  # a subnormal float32
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "s.npz", x=x)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    for name in ("a.npy", "s.npz", "c.npz"):
        ds = open_data(tmp_path / name)
        for a, b in [(0, 1), (3, 40), (96, 97), (0, 97), (5, 5)]:
            got = ds.x.read(a, b)
            assert got.dtype == x.dtype and got.shape == x[a:b].shape, name
            assert got.tobytes() == x[a:b].tobytes(), (name, a, b)  # bytes: NaN-safe and sign-of-zero exact


def test_reads_without_os_preadv_are_exact_from_many_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where there is no positional read (Windows), reads share the file position under a lock."""
    import time

    monkeypatch.delattr(os, "preadv", raising=False)
    real_lseek = os.lseek

    def lseek_then_yield(fd: int, pos: int, how: int) -> int:  # invites another thread in between seek and read
        out = real_lseek(fd, pos, how)
        time.sleep(0.0005)
        return out

    monkeypatch.setattr(os, "lseek", lseek_then_yield)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 33)).astype(">f8")
    np.save(tmp_path / "x.npy", x)
    assert _read_from_six_threads(open_data(tmp_path / "x.npy"), x, 200) == []


def test_stored_npz_member_is_read_in_place_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if not hasattr(os, "preadv"):
        pytest.skip("no os.preadv here")
    np.savez(tmp_path / "s.npz", x=np.arange(4000, dtype=np.float64).reshape(1000, 4))
    ds = open_data(tmp_path / "s.npz")
    reads: list[tuple[int, int]] = []
    real = os.preadv

    def spy(fd: int, buffers: list, offset: int) -> int:
        reads.append((offset, sum(len(b) for b in buffers)))
        return real(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", spy)
    np.testing.assert_array_equal(ds.x.read(10, 12), np.arange(40, 48, dtype=np.float64).reshape(2, 4))
    assert len(reads) == 1 and reads[0][1] == 2 * 4 * 8  # just the two rows, nothing else of the member
    start = (tmp_path / "s.npz").read_bytes().find(np.arange(4000, dtype=np.float64).tobytes())  # the member's data
    assert start > 0 and reads[0][0] == start + 10 * 4 * 8


def test_a_file_shorter_than_its_header_or_shrunk_later_is_a_data_error(tmp_path: Path, capsys, digits_mlp):
    x = digits_mlp.x[:300]
    path = tmp_path / "x.npy"
    np.save(path, x)
    whole = path.read_bytes()
    path.write_bytes(whole[:-100])
    with pytest.raises(DataError, match="truncated"):
        open_data(path)
    rc = main(["certify", str(digits_mlp.onnx_path), "--data", str(path), "-q"])
    assert rc == 2 and "truncated" in capsys.readouterr().err
    path.write_bytes(whole)
    ds = open_data(path)
    with open(path, "r+b") as f:  # the file shrinks after it was opened
        f.truncate(len(whole) - 64 * 4 * 10)
    np.testing.assert_array_equal(ds.x.read(0, 10), x[:10])
    with pytest.raises(DataError, match="truncated"):
        ds.x.read(280, 300)


def test_compressed_member_read_from_many_threads_at_once_is_exact(tmp_path: Path):
    """certify reads in two threads at once; a decompressor shared between them is not thread-safe."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    assert _read_from_six_threads(open_data(tmp_path / "c.npz"), x, 400) == []


# --------------------------------------------------------------------------------------------- memory


@needs_proc
def test_file_pages_do_not_stay_resident_whatever_the_readers_do(tmp_path: Path):
    """Readers that end after one batch, and a consumer that keeps every batch and touches it again after the
    next read: with a memory map each left the file's pages resident (64 MiB here); with reads, none."""
    path = tmp_path / "x.npy"
    rows, width = 4096, 4096  # 64 MiB of float32
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    arr[:] = 1.0
    arr.flush()
    del arr
    ds = open_data(path)
    ds.x.read(0, 1)  # warm up: whatever reading loads once (code, not data) is in the baseline
    before = _rss_file_kib()
    sums: list[float] = []

    def one(a: int) -> None:
        sums.append(float(ds.x.read(a, a + 256).sum(dtype=np.float64)))

    for a in range(0, rows, 256):  # every batch from its own short-lived thread
        t = threading.Thread(target=one, args=(a,))
        t.start()
        t.join()
    kept = [ds.x.read(a, a + 256) for a in range(0, rows, 256)]  # a consumer that keeps every batch ...
    total = sum(float(b.sum(dtype=np.float64)) for b in kept)  # ... and touches them all again at the end
    grown_mib = (_rss_file_kib() - before) / 1024
    assert sums == [256.0 * width] * (rows // 256) and total == float(rows * width)
    assert grown_mib < 8, f"file-backed resident memory grew by {grown_mib:.1f} MiB streaming a 64 MiB file"


@needs_proc
def test_certify_never_maps_the_data_file(tmp_path: Path, capsys, digits_mlp, monkeypatch: pytest.MonkeyPatch):
    """Whatever stage reads a batch (inference, per-sample float bounds, local bounds), the data file is not
    mapped into the process while certify runs: the data's pages are never in its resident set."""
    x, y = digits_mlp.x, digits_mlp.y
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "s.npz", x=x, y=y)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, len(x))]):
        np.save(shards / f"x_{i:03d}.npy", x[a:b])
    checks: list[bool] = []
    watching: list[Path] = []
    real = StreamedInputs.__getitem__

    def watched(self: StreamedInputs, item: slice) -> np.ndarray:
        out = real(self, item)
        checks.append(any(_mapped(p) for p in watching))
        return out

    monkeypatch.setattr(StreamedInputs, "__getitem__", watched)
    for data, files in [
        (tmp_path / "x.npy", [tmp_path / "x.npy"]),
        (tmp_path / "s.npz", [tmp_path / "s.npz"]),
        (shards, sorted(shards.iterdir())),
    ]:
        checks.clear()
        watching[:] = files
        args = ["certify", digits_mlp.onnx_path, "--data", data, "-q", "--batch-size", "256", "--local-bounds", "all"]
        rc = main([str(a) for a in [*args, "-o", tmp_path / "r.json"]])
        assert rc in (0, 1), capsys.readouterr().err
        assert len(checks) >= 2 * (len(x) // 256) and not any(checks), data


def test_a_stored_member_shorter_than_its_header_is_refused_not_read_into_the_archive(tmp_path: Path):
    """The archive goes on after a stored member (the central directory): a member one row short must not be
    completed with those bytes."""
    import io
    import zipfile

    x = np.arange(300, dtype=np.float32).reshape(300, 1)
    buf = io.BytesIO()
    np.save(buf, x)
    with zipfile.ZipFile(tmp_path / "short.npz", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", buf.getvalue()[:-4])  # the header says 300 rows; 299 follow it
    assert (tmp_path / "short.npz").stat().st_size > len(buf.getvalue())  # the file itself is long enough
    with pytest.raises(DataError, match="truncated"):
        open_data(tmp_path / "short.npz")


# ------------------------------------------------------------------------------------- open descriptors


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_NOFILE is POSIX")
def test_more_shards_than_open_file_descriptors(tmp_path: Path) -> None:
    """A reader holding one descriptor per shard ran out at the process limit (1,024 on most Linux hosts):
    here 300 shards are read under a limit of 64 descriptors, in a child process so the limit stays there."""
    import subprocess
    import sys

    x = np.arange(300 * 2 * 3, dtype=np.float32).reshape(300 * 2, 3)
    for i in range(300):
        np.save(tmp_path / f"x_{i}.npy", x[2 * i : 2 * i + 2])
    code = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "from lipgraph.stream import open_data\n"
        f"ds = open_data({str(tmp_path)!r})\n"
        "v = ds.x.fitted((None, 3), np.dtype(np.float32), 'data')\n"
        f"np.save({str(tmp_path / 'out.bin.npy')!r}, v[0 : len(v)])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.bin.npy"), x)


def test_a_file_swapped_in_after_opening_is_refused(tmp_path: Path) -> None:
    """Each read reopens the file by name: the name must still be the file whose header was checked."""
    p = tmp_path / "x.npy"
    np.save(p, np.ones((8, 3), np.float32))
    v = open_data(p).x.fitted((None, 3), np.dtype(np.float32), "data")
    other = tmp_path / "other.npy"
    np.save(other, np.full((8, 3), 1e30, np.float32))
    os.replace(other, p)
    with pytest.raises(DataError, match="replaced"):
        v[0:8]
