"""Data larger than memory: inputs read batch by batch, never whole.

Sources (all read with ``allow_pickle=False``; object arrays are refused):

* ``.npy``: each batch is read from the file at its offset (``os.preadv``) into a new array;
* ``.npz``: each member's ``.npy`` header is parsed from the archive; an uncompressed (stored) member is
  read like an ``.npy`` at its offset in the file, a compressed one is decompressed sequentially batch by
  batch;
* a directory of ``.npy`` shards: ``x_000.npy, x_001.npy, ...`` (inputs; any key of ``X_KEYS`` as the
  prefix) and optionally ``y_000.npy, ...`` (labels), concatenated in the order of the index in the name; label
  shard K belongs to input shard K.

:class:`StreamedInputs` stands in for the input array inside :func:`lipgraph.certify.certify`: ``len``,
``shape``, ``dtype``, slicing (returns the batch fitted to the model, checked like a whole array would
be) and ``min`` / ``max`` over what was read. A shard view (``--shard K/N``) keeps every N-th block of
``block`` samples, starting with block K-1, so N shards partition the data deterministically.
"""

from __future__ import annotations

import math
import os
import re
import struct
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipgraph.data import X_KEYS, Y_KEYS, fit_inputs
from lipgraph.errors import DataError

Reader = Callable[[int, int], np.ndarray]  # rows [start, stop) of one array, as an ndarray


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: blocks ``index-1, index-1+count, ...`` of ``block`` samples."""

    index: int
    count: int

    @staticmethod
    def parse(text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
            raise DataError(f"--shard '{text}' must be K/N with 1 <= K <= N, e.g. 2/4")
        return Shard(int(m.group(1)), int(m.group(2)))

    def rows(self, n: int, block: int) -> list[tuple[int, int]]:
        """The sample ranges of this shard, in order."""
        return [(s, min(s + block, n)) for s in range(block * (self.index - 1), n, block * self.count)]


# ------------------------------------------------------------------------------------------------ readers


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects; lipgraph only reads numeric arrays (allow_pickle=False)")
    if dtype.kind in "OUSV":
        raise DataError(f"{where} has dtype {dtype}; lipgraph needs a numeric array")


_MAX_BYTES = 2**62  # no file holds more; larger products are crafted headers (and overflow int64 arithmetic)


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """A header's shape must describe an array a file can hold: sizes >= 0, at least one value per sample,
    a byte count that fits (Python integers here, so a crafted ``(3, 2**32, 2**32)`` cannot wrap around)."""
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise DataError(f"{where} has an invalid shape {shape} in its header (sizes must be >= 0)")
    if len(shape) >= 1 and math.prod(shape[1:]) == 0:
        raise DataError(f"{where} has shape {shape}: its samples hold no values")
    if math.prod(shape) * int(dtype.itemsize) >= _MAX_BYTES:
        raise DataError(f"{where} has shape {shape} in its header: more bytes than any file holds")


class _FileRows:
    """Rows ``[a, b)`` of an array stored at ``offset`` in a file, read with positional reads into fresh buffers.

    No memory map: pages of a file mapping count in the process's resident set once touched, and whichever
    stage touched them last (the inference, the per-sample float bounds, the local bounds, a view some stage
    kept) decides when they leave it, so the peak resident size of a streamed run followed the file's size
    and the threads' timing. A positional read (``os.preadv``) copies the batch from the page cache into a
    new array that is freed with the batch; the page cache itself is not this process's memory.

    The file is opened for each read and closed after it: a directory of thousands of shards would otherwise
    hold one descriptor per shard (past the usual limit of 1,024 per process). Each open checks that the path
    still names the file whose header was read (same device and inode), so a file swapped in under the same
    name is refused rather than read; each read has its own descriptor, so threads share no file position.

    Exact bytes: the buffer has the file's dtype (byte order included); a Fortran-ordered array is read as
    one run of ``b - a`` items per position of a sample, then transposed (the values numpy's map gave).
    A file shorter than its header says is refused here, and a read that comes back short (the file shrank
    since) raises :class:`~lipgraph.errors.DataError` too.
    """

    def __init__(
        self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, where: str, fortran: bool = False
    ):
        self.shape, self.dtype, self.offset, self.fortran, self.where = shape, dtype, offset, fortran, where
        self.path = path
        self.sample_items = math.prod(shape[1:])  # Python ints: the shape was checked by _check_shape
        self.row_bytes = int(dtype.itemsize) * self.sample_items
        need = offset + self.row_bytes * shape[0]
        st = os.stat(path)
        self.identity = (st.st_dev, st.st_ino)
        if st.st_size < need:
            raise DataError(f"{where} is truncated ({st.st_size} bytes, the header promises {need})")

    def __call__(self, a: int, b: int | None) -> np.ndarray:
        n = self.shape[0]
        b = n if b is None else min(b, n)
        a = max(min(a, b), 0)
        rows = b - a
        fd = self._open()
        try:
            if not self.fortran:
                out = np.empty((rows, *self.shape[1:]), dtype=self.dtype)
                self._read_into(fd, out, self.offset + a * self.row_bytes)
                return out
            # Fortran order: item (i, j) of the (n, samples' items) matrix sits at (j * n + i); rows a..b of
            # column j are one contiguous run.
            cols = np.empty((self.sample_items, rows), dtype=self.dtype)
            isz = self.dtype.itemsize
            for j in range(self.sample_items if rows else 0):
                self._read_into(fd, cols[j], self.offset + (j * n + a) * isz)
            return cols.reshape((*self.shape[:0:-1], rows)).T  # (rows, *shape[1:]) in Fortran order
        finally:
            os.close(fd)

    def _open(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise DataError(f"{self.where} can no longer be read ({exc.strerror or type(exc).__name__})") from None
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            os.close(fd)
            raise DataError(f"{self.where} was replaced by another file while lipgraph read it")
        return fd

    def _read_into(self, fd: int, out: np.ndarray, pos: int) -> None:
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            got = self._pread(fd, view[done:], pos + done)
            if got <= 0:
                raise DataError(f"{self.where} is truncated (a read at byte {pos + done} found the end of the file)")
            done += got

    @staticmethod
    def _pread(fd: int, buf: memoryview, pos: int) -> int:
        if hasattr(os, "preadv"):
            return os.preadv(fd, [buf], pos)
        os.lseek(fd, pos, os.SEEK_SET)  # no positional read here (Windows): this read's own descriptor
        got = os.read(fd, len(buf))
        buf[: len(got)] = got
        return len(got)


def _read_npy_header(f: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise DataError(f"cannot read {where} as .npy ({str(exc).splitlines()[0]})") from None
    raise DataError(f"{where} has an unknown .npy format version {version}")


def _npy_reader(path: Path) -> tuple[Reader, tuple[int, ...], np.dtype]:
    where = f"'{path}'"
    try:
        with open(path, "rb") as f:
            shape, fortran, dtype = _read_npy_header(f, where)
            offset = f.tell()
    except OSError as exc:
        raise DataError(f"cannot read '{path}' as .npy ({str(exc).splitlines()[0] or type(exc).__name__})") from None
    _check_dtype(dtype, where)
    if len(shape) == 0:
        return _scalar_reader(where), (), dtype
    _check_shape(tuple(shape), dtype, where)
    return _FileRows(path, offset, tuple(shape), dtype, where, fortran), tuple(shape), dtype


def _scalar_reader(where: str) -> Reader:
    def read(a: int, b: int | None) -> np.ndarray:
        raise DataError(f"{where} is a scalar; expected an array of samples")

    return read


def _npz_member_reader(path: Path, zf: zipfile.ZipFile, name: str) -> tuple[Reader, tuple[int, ...], np.dtype]:
    """Rows of one ``.npz`` member without reading the rest: read in place if stored, else streamed."""
    info = zf.getinfo(name)
    where = f"'{path}' array '{name[:-4]}'"
    with zf.open(info) as f:
        shape, fortran, dtype = _read_npy_header(f, where)
        header_len = f.tell()
    _check_dtype(dtype, where)
    if len(shape) == 0:
        return _scalar_reader(where), (), dtype
    _check_shape(tuple(shape), dtype, where)
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as raw:  # the local file header: 30 bytes + name + extra field
            raw.seek(info.header_offset)
            local = raw.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{where}: the archive's local header is damaged")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        offset = info.header_offset + 30 + name_len + extra_len + header_len
        need = header_len + int(dtype.itemsize) * math.prod(shape)
        if min(info.file_size, info.compress_size) < need:  # else the rows would run on into the next member
            raise DataError(f"{where} is truncated ({info.file_size} bytes, the header promises {need})")
        return _FileRows(path, offset, tuple(shape), dtype, where, fortran), tuple(shape), dtype
    if fortran:
        # Rows of a compressed Fortran-ordered array are spread over the whole stream: read it whole (rare:
        # numpy.savez keeps C order).
        with zf.open(info) as f:
            whole = np.lib.format.read_array(f, allow_pickle=False)
        return (lambda a, b: whole[a:b]), tuple(whole.shape), whole.dtype
    row_bytes = int(dtype.itemsize) * math.prod(shape[1:])
    # Sequential decompression, one handle per reading thread: a decompressor's state is not safe to share
    # between threads (certify reads in two at once), and each thread reads forward, so a seek only
    # decompresses what it skips (a backward seek would start the member over).
    local_handles = threading.local()

    def read(a: int, b: int | None) -> np.ndarray:
        b = shape[0] if b is None else min(b, shape[0])
        a = max(min(a, b), 0)
        handle = getattr(local_handles, "handle", None)
        if handle is None:
            handle = local_handles.handle = zf.open(info)
        handle.seek(header_len + a * row_bytes)
        buf = handle.read((b - a) * row_bytes)
        if len(buf) != (b - a) * row_bytes:
            raise DataError(f"{where} is truncated")
        return np.frombuffer(buf, dtype=dtype).reshape((b - a, *shape[1:]))

    return read, tuple(shape), dtype


def _concat_reader(parts: list[tuple[Reader, tuple[int, ...], np.dtype]], where: str) -> tuple[Reader, tuple, np.dtype]:
    shapes = {p[1][1:] for p in parts}
    dtypes = {p[2] for p in parts}
    if len(shapes) != 1 or len(dtypes) != 1:
        raise DataError(f"{where}: the shards differ in per-sample shape or dtype ({sorted(map(str, shapes))})")
    starts = np.cumsum([0] + [p[1][0] for p in parts])

    def read(a: int, b: int) -> np.ndarray:
        out = []
        for (fn, shape, _), s in zip(parts, starts[:-1], strict=True):
            lo, hi = max(a, s), min(b, s + shape[0])
            if lo < hi:
                out.append(fn(int(lo - s), int(hi - s)))
        return np.concatenate(out) if len(out) != 1 else out[0]

    return read, (int(starts[-1]), *next(iter(shapes))), next(iter(dtypes))


def _shard_files(d: Path, keys: tuple[str, ...]) -> tuple[str | None, list[tuple[int, Path]]]:
    """The first key's shards as (index, path), in the order of the index written in the name (``x_2`` before
    ``x_10``, whatever the zero padding); a file without an index is index 0. Two files with one index
    (``x_1.npy`` and ``x_01.npy``) are refused: which one holds those samples would be a guess."""
    for key in keys:
        found: dict[int, Path] = {}
        for p in sorted(d.iterdir()):
            m = re.fullmatch(rf"{key}(?:[_\-.]?(\d+))?", p.stem) if p.suffix == ".npy" else None
            if m is None:
                continue
            index = int(m.group(1) or 0)
            if index in found:
                raise DataError(f"'{d}': '{found[index].name}' and '{p.name}' are both shard {index} of '{key}'")
            found[index] = p
        if found:
            return key, sorted(found.items())
    return None, []


def _labels_for_shards(
    d: Path, xs: list[tuple[int, Path]], parts: list[tuple[Reader, tuple, np.dtype]]
) -> tuple[str | None, np.ndarray | None]:
    """Label shards paired with the input shards by index: the same indices, the same row counts, else refused
    (labels shifted onto other inputs would certify the wrong claim)."""
    y_key, ys = _shard_files(d, Y_KEYS)
    if not ys:
        return None, None
    x_idx, y_idx = [i for i, _ in xs], [i for i, _ in ys]
    if x_idx != y_idx:
        only_x = sorted(set(x_idx) - set(y_idx))[:5]
        only_y = sorted(set(y_idx) - set(x_idx))[:5]
        raise DataError(
            f"'{d}': label shards do not match the input shards (inputs without labels: {only_x or 'none'}, "
            f"labels without inputs: {only_y or 'none'}); write one {y_key}_K.npy per input shard"
        )
    labels = []
    for (index, path), (_, xshape, _) in zip(ys, parts, strict=True):
        reader, yshape, _ = _npy_reader(path)
        if len(yshape) == 0 or yshape[0] != xshape[0]:
            raise DataError(
                f"'{path}': {yshape[0] if yshape else 'a scalar'} labels for the {xshape[0]} inputs of shard {index}"
            )
        labels.append(np.asarray(reader(0, None)))
    return y_key, np.concatenate(labels)


# ------------------------------------------------------------------------------------------------ the view


class StreamedInputs:
    """A read-on-demand stand-in for the input array (see the module docstring)."""

    def __init__(
        self,
        reader: Reader,
        shape: tuple[int, ...],
        dtype: np.dtype,
        source: str,
        rows: list[tuple[int, int]] | None = None,
    ):
        self._reader = reader
        self.full_shape = shape
        self.raw_dtype = np.dtype(dtype)
        self.source = source
        self.rows = rows if rows is not None else [(0, shape[0])]
        self._starts = np.cumsum([0] + [b - a for a, b in self.rows])
        self._fit: tuple | None = None
        self._min = np.inf
        self._max = -np.inf

    # The array protocol certify() relies on.
    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._sample_shape())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._fit[1]) if self._fit else self.raw_dtype

    def _sample_shape(self) -> tuple[int, ...]:
        return tuple(self._fit[2]) if self._fit else tuple(self.full_shape[1:])

    def global_indices(self) -> np.ndarray:
        return np.concatenate([np.arange(a, b) for a, b in self.rows]) if self.rows else np.zeros(0, np.int64)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of this view (view coordinates), raw dtype."""
        out = []
        for i, (a, b) in enumerate(self.rows):
            s = int(self._starts[i])
            lo, hi = max(start, s), min(stop, s + b - a)
            if lo < hi:
                out.append(self._reader(a + lo - s, a + hi - s))
        if not out:
            return np.zeros((0, *self.full_shape[1:]), dtype=self.raw_dtype)
        return out[0] if len(out) == 1 else np.concatenate(out)

    def fitted(self, declared: tuple, dtype: np.dtype, source: str) -> StreamedInputs:
        """This view, fitted batch by batch to the model input (checked now on the first sample)."""
        if len(self) == 0:
            raise DataError(f"{source}: the data holds zero samples")
        first = self.read(0, 1)
        try:
            probe = fit_inputs(first, declared, dtype, source)
        except DataError as exc:  # name the whole data's shape, not the one-sample probe's
            raise DataError(str(exc).replace(str(tuple(first.shape)), str((len(self), *first.shape[1:])))) from None
        out = StreamedInputs(self._reader, self.full_shape, self.raw_dtype, self.source, self.rows)
        out._fit = (declared, np.dtype(dtype), probe.shape[1:], source)
        return out

    def __getitem__(self, item: slice) -> np.ndarray:
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("streamed inputs support contiguous slices only")
        start, stop, _ = item.indices(len(self))
        batch = self.read(start, stop)
        if self._fit is None:
            return batch
        declared, dtype, _, source = self._fit
        try:
            out = fit_inputs(batch, declared, dtype, source)
        except DataError as exc:
            raise DataError(f"{exc} (samples {start}..{stop - 1})") from None
        if out.size:
            self._min = min(self._min, float(out.min()))
            self._max = max(self._max, float(out.max()))
        return out

    def min(self, *_args: object, **_kw: object) -> float:  # noqa: A003 - numpy's reduction protocol
        return self._min

    def max(self, *_args: object, **_kw: object) -> float:  # noqa: A003
        return self._max


@dataclass
class StreamedDataset:
    """What :func:`open_data` returns: the same attributes as :class:`lipgraph.data.Dataset`."""

    x: StreamedInputs
    y: np.ndarray | None
    source: str
    x_key: str
    y_key: str | None
    total: int  # samples in the file (after --limit), before sharding


def is_streamed(x: object) -> bool:
    return isinstance(x, StreamedInputs)


def open_data(
    path: str | os.PathLike[str], limit: int | None = None, shard: Shard | None = None, block: int = 256
) -> StreamedDataset:
    """Open ``path`` (``.npy``, ``.npz`` or a directory of ``.npy`` shards) without reading the inputs."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}' does not exist")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    y: np.ndarray | None = None
    y_key: str | None = None
    if p.is_dir():
        x_key, xs = _shard_files(p, X_KEYS)
        if not xs:
            raise DataError(
                f"'{p}' is a directory without input shards named like x_000.npy (prefixes: "
                f"{', '.join(X_KEYS)}); pass an .npz / .npy file or such a directory"
            )
        parts = [_npy_reader(f) for _, f in xs]
        reader, shape, dtype = _concat_reader(parts, f"'{p}'")
        y_key, y = _labels_for_shards(p, xs, parts)
    elif p.suffix == ".npy":
        x_key = "x"
        reader, shape, dtype = _npy_reader(p)
    else:
        if not zipfile.is_zipfile(p):
            raise DataError(
                f"'{p}' is not an .npz file (numpy.savez archive) nor an .npy file; save the data "
                "with numpy.savez or numpy.save"
            )
        try:
            zf = zipfile.ZipFile(p)
            names = [n for n in zf.namelist() if n.endswith(".npy")]
            keys = [n[:-4] for n in names]
            x_key = next((k for k in X_KEYS if k in keys), None)  # type: ignore[assignment]
            if x_key is None:
                raise DataError(
                    f"'{p}' has no inputs under any of the keys {', '.join(X_KEYS)} "
                    f"(it has: {', '.join(keys) or 'none'})"
                )
            reader, shape, dtype = _npz_member_reader(p, zf, x_key + ".npy")
            y_key = next((k for k in Y_KEYS if k in keys), None)
            if y_key is not None:
                yr, yshape, _ = _npz_member_reader(p, zf, y_key + ".npy")
                y = np.asarray(yr(0, yshape[0] if yshape else 1))
        except DataError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"cannot read '{p}' as .npz ({msg})") from None
    if len(shape) == 0:
        raise DataError(f"'{p}': inputs are a scalar; expected an array of samples")
    n = shape[0] if limit is None else min(shape[0], limit)
    if y is not None and limit is not None:
        y = y[:limit]
    rows = shard.rows(n, block) if shard is not None else [(0, n)]
    if shard is not None and n and not rows:
        batches = -(-n // block)
        raise DataError(
            f"--shard {shard.index}/{shard.count}: this part holds no batch ({n} samples make {batches} batches "
            f"of {block}); use at most {batches} part{'s' if batches != 1 else ''}, or a smaller --batch-size"
        )
    x = StreamedInputs(reader, (n, *shape[1:]), dtype, str(p), rows)
    if y is not None and shard is not None and len(y) == n:
        y = y[x.global_indices()]
    return StreamedDataset(x, y, str(p), x_key, y_key, n)
