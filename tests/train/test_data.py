"""Datasets: digits and Keras-layout .npz, scaled to [0, 1], N x C x H x W, deterministic splits."""

import numpy as np
import pytest

from lipgraph.errors import DataError
from lipgraph.train.data import load, write_test_split


def test_digits_shapes_and_determinism():
    a, b, c = load("digits", seed=3), load("digits", seed=3), load("digits", seed=4)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.x_train.dtype == np.float32
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0 and a.x_train.max() > 0.9
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    assert np.array_equal(a.x_test, b.x_test) and not np.array_equal(a.x_test, c.x_test)
    assert a.n_classes == 10


def test_keras_npz_uint8(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "k.npz"
    np.savez(p, x_train=rng.integers(0, 256, (50, 6, 6), dtype=np.uint8), y_train=rng.integers(0, 3, 50),
             x_test=rng.integers(0, 256, (10, 6, 6), dtype=np.uint8), y_test=rng.integers(0, 3, 10))
    d = load(str(p), seed=0)
    assert d.x_test.shape == (10, 1, 6, 6) and d.x_test.max() <= 1.0
    with np.load(p) as f:
        np.testing.assert_allclose(d.x_test[:, 0], f["x_test"] / 255.0, rtol=1e-6)
    out = tmp_path / "t.npz"
    write_test_split(str(out), d.x_test, d.y_test)
    with np.load(out) as f:
        assert f["x"].dtype == np.float32 and f["y"].dtype == np.int64


def test_bad_npz(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, foo=np.zeros(3))
    with pytest.raises(DataError):
        load(str(p))
    with pytest.raises(DataError):
        load(str(tmp_path / "missing.npz"))
