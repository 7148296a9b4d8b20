"""Datasets: scikit-learn's bundled digits (default) or any ``.npz``; deterministic splits.

Images come out as float32 ``N x C x H x W`` in [0, 1] (uint8 pixels divided by 255, digits' 0..16
by 16) and int64 labels. Splits depend only on ``seed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from lipgraph.errors import DataError


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _to_nchw(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:  # flat vectors: a 1-channel "image" of one row
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = np.transpose(x, (0, 3, 1, 2))
    elif x.ndim != 4:
        raise DataError(f"images must have 2 to 4 axes, got shape {x.shape}")
    return np.ascontiguousarray(x)


def _split(x: np.ndarray, y: np.ndarray, frac: float, rng: np.random.Generator):
    idx = rng.permutation(len(x))
    n = int(round(len(x) * frac))
    return x[idx[n:]], y[idx[n:]], x[idx[:n]], y[idx[:n]]


def load(dataset: str, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.2,
         limit_train: int | None = None, limit_test: int | None = None) -> Splits:
    """Load ``digits`` or a ``.npz`` (keys ``x_train/y_train/x_test/y_test``, or ``x``/``y`` to be split)."""
    rng = np.random.default_rng(seed)
    if dataset == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise DataError("--dataset digits needs scikit-learn: pip install scikit-learn") from exc
        d = load_digits()
        x = (d.images.astype(np.float32) / 16.0)[:, None]
        y = d.target.astype(np.int64)
        x_tr, y_tr, x_te, y_te = _split(x, y, test_frac, rng)
        name = "digits"
    else:
        if not os.path.isfile(dataset):
            raise DataError(f"--dataset: no such file {dataset!r} (use 'digits' or an .npz path)")
        try:
            with np.load(dataset, allow_pickle=False) as f:
                keys = set(f.files)
                if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                    x_tr, y_tr = _to_nchw(f["x_train"]), f["y_train"].astype(np.int64).reshape(-1)
                    x_te, y_te = _to_nchw(f["x_test"]), f["y_test"].astype(np.int64).reshape(-1)
                elif {"x", "y"} <= keys:
                    x_tr, y_tr, x_te, y_te = _split(_to_nchw(f["x"]), f["y"].astype(np.int64).reshape(-1),
                                                    test_frac, rng)
                else:
                    raise DataError(f"{dataset}: expected keys x_train/y_train/x_test/y_test or x/y, "
                                    f"found {sorted(keys)}")
        except (OSError, ValueError) as exc:
            raise DataError(f"{dataset}: cannot read as .npz ({exc})") from exc
        name = os.path.basename(dataset)
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"{dataset}: images and labels differ in length")
    x_tr, y_tr, x_va, y_va = _split(x_tr, y_tr, val_frac, rng)
    if limit_train is not None:
        x_tr, y_tr = x_tr[:limit_train], y_tr[:limit_train]
    if limit_test is not None:
        x_te, y_te = x_te[:limit_test], y_te[:limit_test]
        x_va, y_va = x_va[:limit_test], y_va[:limit_test]
    return Splits(x_tr, y_tr, x_va, y_va, x_te, y_te, name)


def write_test_split(path: str, x: np.ndarray, y: np.ndarray) -> None:
    """Write ``x`` (float32 NCHW) and ``y`` (int64) atomically, the layout ``lipgraph certify`` reads."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(tmp, x=x.astype(np.float32), y=y.astype(np.int64))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
