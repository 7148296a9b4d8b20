"""Datasets for `lipgraph certify`: `.npz` files, checked against the model before any inference.

Keys (DESIGN.md): inputs under ``x`` / ``inputs`` / ``images`` / ``x_test``, labels (optional)
under ``y`` / ``labels`` / ``y_test``. Files are read with ``allow_pickle=False`` always, so an
``.npz`` cannot run code. Inputs are cast to the model's float type but never rescaled: uint8
pixels stay in 0..255 (a model trained on [0, 1] then sees other data; that is the user's choice,
and the report states the input range it saw).

Every problem is one line through :class:`~lipgraph.errors.DataError` (exit code 2).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipgraph.errors import DataError

X_KEYS = ("x", "inputs", "images", "x_test")
Y_KEYS = ("y", "labels", "y_test")


@dataclass
class Dataset:
    """Inputs and optional labels as read from a file (not yet fitted to a model)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    x_key: str
    y_key: str | None


def load_npz(path: str | os.PathLike[str], limit: int | None = None) -> Dataset:
    """Read ``path`` (an ``.npz``) with ``allow_pickle=False``; ``limit`` keeps the first N samples."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}' does not exist")
    if p.is_dir():
        raise DataError(f"'{p}' is a directory; pass an .npz file with the inputs under 'x'")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be at least 1, got {limit}")
    if not zipfile.is_zipfile(p):
        raise DataError(f"'{p}' is not an .npz file (numpy.savez archive); save the data with numpy.savez")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = list(npz.files)
            x_key = next((k for k in X_KEYS if k in keys), None)
            if x_key is None:
                raise DataError(
                    f"'{p}' has no inputs under any of the keys {', '.join(X_KEYS)} "
                    f"(it has: {', '.join(keys) or 'none'})"
                )
            y_key = next((k for k in Y_KEYS if k in keys), None)
            x = _read(npz, x_key, p)
            y = _read(npz, y_key, p) if y_key is not None else None
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read '{p}' as .npz ({msg})") from None
    if limit is not None:
        x = x[:limit]
        y = y[:limit] if y is not None else None
    return Dataset(x, y, str(p), x_key, y_key)


def _read(npz: np.lib.npyio.NpzFile, key: str, p: Path) -> np.ndarray:
    try:
        arr = npz[key]
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise DataError(
                f"'{p}' array '{key}' holds Python objects; lipgraph only reads numeric arrays (allow_pickle=False)"
            ) from None
        raise
    if arr.dtype == object or arr.dtype.kind in "OUSV":
        raise DataError(f"'{p}' array '{key}' has dtype {arr.dtype}; lipgraph needs a numeric array")
    return arr


def fit_inputs(
    x: np.ndarray,
    declared: tuple[int | str | None, ...],
    dtype: np.dtype,
    source: str = "data",
) -> np.ndarray:
    """Fit ``x`` (N, ...) to the model input shape ``declared`` (batch first; None = any size).

    A missing size-1 axis (the channel of grayscale images: NCHW axis 1 or NHWC last axis) is
    added when exactly the model expects it. The result is C-contiguous in the model's float type.
    """
    if x.ndim == 0:
        raise DataError(f"{source}: inputs are a scalar; expected an array of samples")
    if x.shape[0] == 0:
        raise DataError(f"{source}: the data holds zero samples")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: inputs have dtype {x.dtype}; expected numbers")
    want = [d if isinstance(d, int) and d > 0 else None for d in declared]
    if x.ndim == len(want) - 1 and len(want) >= 3:
        for axis in (1, len(want) - 1):
            if want[axis] != 1:
                continue
            cand_shape = list(x.shape)
            cand_shape.insert(axis, 1)
            if _matches(tuple(cand_shape), want):
                x = np.expand_dims(x, axis)
                break
    if not _matches(x.shape, want):
        exp = "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(want)) + ")"
        raise DataError(f"{source}: inputs have shape {tuple(x.shape)} but the model expects {exp}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(f"{source}: inputs contain NaN or Inf (first at sample {bad})")
    out = np.ascontiguousarray(x, dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise DataError(f"{source}: inputs overflow the model's float type {np.dtype(dtype).name}")
    return out


def _matches(shape: tuple[int, ...], want: list[int | None]) -> bool:
    if len(shape) != len(want):
        return False
    return all(w is None or s == w for s, w in zip(shape[1:], want[1:], strict=True))


def fit_labels(y: np.ndarray | None, n: int, n_classes: int, source: str = "data") -> np.ndarray | None:
    """Check labels: integers (or integral floats) in [0, n_classes), one per sample."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{source}: labels have shape {tuple(y.shape)}; expected one integer class per sample (N,)")
    if len(y) != n:
        raise DataError(f"{source}: {len(y)} labels for {n} inputs; the lengths must match")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{source}: labels must be integer class indices (found non-integral values)")
        outside = (y < 0) | (y >= n_classes)  # before the cast: 1e20 has no int64 value
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            raise DataError(
                f"{source}: label {y[bad]:g} at sample {bad} is outside the model's classes 0..{n_classes - 1}"
            )
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels have dtype {y.dtype}; expected integer class indices")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= n_classes))[0])
        raise DataError(
            f"{source}: label {int(y[bad])} at sample {bad} is outside the model's classes 0..{n_classes - 1}"
        )
    return y
