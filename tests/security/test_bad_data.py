"""Bad data for `lipgraph certify MODEL --data X`: exit 2, one line, no traceback, no report.

The pickle cases prove more than a refusal: the payload is a real one (loading it with
``allow_pickle=True`` creates a marker file), and after lipgraph has run the marker does not exist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.security.helpers import (
    assert_no_report,
    assert_refused,
    data_npz,
    mlp_model,
    run_cli,
    run_subprocess,
    save,
)

pytestmark = pytest.mark.filterwarnings("ignore")


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a file appears if and only if code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save(mlp_model(), tmp_path / "m.onnx")


def _certify(capsys: pytest.CaptureFixture[str], model: Path, data: Path, tmp_path: Path, *extra: str):  # noqa: ANN202
    out = tmp_path / "reports" / "cert.json"
    out.parent.mkdir(exist_ok=True)
    res = run_cli(["certify", model, "--data", data, "--format", "json", "-o", out, "-q", *extra], capsys)
    return res, out


def test_valid_data_writes_report(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control: the same command on good data exits 0 and writes the report."""
    res, out = _certify(capsys, model, data_npz(tmp_path / "d.npz"), tmp_path)
    assert res.rc == 0, res.err
    assert out.is_file()


# ---------------------------------------------------------------------------- pickles
def _pickle_npz(tmp_path: Path, key: str, marker: Path) -> Path:
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    extra = {key: arr}
    return data_npz(tmp_path / f"pickle_{key}.npz", **extra)


def _prove_payload_runs(path: Path, key: str, marker: Path) -> None:
    """The payload is live: numpy with allow_pickle=True runs it (then clean up)."""
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as npz:
        npz[key]
    assert marker.exists(), "the test payload did not run; the test would prove nothing"
    marker.unlink()


@pytest.mark.parametrize("key", ["x", "y", "extra"])
def test_pickled_object_array_is_never_unpickled(key: str, model: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / f"PWNED_{key}"
    data = _pickle_npz(tmp_path, key, marker)
    res, out = _certify(capsys, model, data, tmp_path)
    assert not marker.exists(), "lipgraph unpickled the data file"
    if key == "extra":
        # An unused key is never read at all: certification goes on from x and y.
        assert res.rc == 0, res.err
    else:
        assert_refused(res, "Python objects", output=out)
    _prove_payload_runs(data, key, marker)


def test_pickled_payload_subprocess(model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED_sub"
    data = _pickle_npz(tmp_path, "x", marker)
    out = tmp_path / "sub.json"
    res = run_subprocess(["certify", model, "--data", data, "-o", out], cwd=tmp_path)
    assert not marker.exists()
    assert_refused(res, "Python objects", output=out)
    _prove_payload_runs(data, "x", marker)


def test_raw_pickle_file_as_data(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bare pickle (not a zip) named .npz: refused before anything parses it."""
    import pickle

    marker = tmp_path / "PWNED_raw"
    data = tmp_path / "raw.npz"
    data.write_bytes(pickle.dumps(_Payload(marker)))
    res, out = _certify(capsys, model, data, tmp_path)
    assert not marker.exists()
    assert_refused(res, "not an .npz", output=out)
    # np.load would have run it: a bare pickle is loaded as one when pickles are allowed.
    np.load(data, allow_pickle=True)
    assert marker.exists()


# ---------------------------------------------------------------------------- content
def test_missing_input_key(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "nokeys.npz"
    np.savez(data, features=np.zeros((3, 4), np.float32))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "no inputs under any of the keys", "features", output=out)


def test_wrong_shape(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "shape.npz", x=np.zeros((20, 5), np.float32))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "(20, 5)", "expects (N, 4)", output=out)


def test_scalar_inputs(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "scalar.npz", x=np.float32(1.0), y=None)
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "scalar", output=out)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(bad: float, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.zeros((20, 4), np.float32)
    x[7, 2] = bad
    data = data_npz(tmp_path / "nan.npz", x=x)
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "NaN or Inf", "sample 7", output=out)


def test_float64_inputs_overflowing_float32(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.zeros((20, 4), np.float64)
    x[3, 0] = 1e300
    data = data_npz(tmp_path / "overflow.npz", x=x)
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "overflow", output=out)


@pytest.mark.parametrize("label", [3, 1000, -1])
def test_label_out_of_range(label: int, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y = np.zeros(20, np.int64)
    y[4] = label
    data = data_npz(tmp_path / "labels.npz", y=y)
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, f"label {label}", "sample 4", "0..2", output=out)


def test_non_integral_labels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "flabels.npz", y=np.full(20, 0.5))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "integer", output=out)


def test_nan_labels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    y = np.zeros(20)
    y[2] = np.nan
    data = data_npz(tmp_path / "nanlabels.npz", y=y)
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "integer", output=out)


def test_string_labels(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "slabels.npz", y=np.array(["cat"] * 20))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "dtype", output=out)


def test_label_shape(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "onehot.npz", y=np.eye(3)[np.zeros(20, int)])
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "labels have shape", output=out)


def test_length_mismatch(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "len.npz", y=np.zeros(19, np.int64))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "19 labels for 20 inputs", output=out)


def test_zero_samples(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = data_npz(tmp_path / "zero.npz", x=np.zeros((0, 4), np.float32), y=np.zeros(0, np.int64))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "zero samples", output=out)


def test_not_an_npz_text(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data.csv"
    data.write_text("1,2,3,4\n5,6,7,8\n")
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "not an .npz", "numpy.savez", output=out)


def test_not_an_npz_npy(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # An .npy is streamed since issue 13; an .npy's bytes under another name are neither format.
    data = tmp_path / "x.dat"
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    data.write_bytes((tmp_path / "x.npy").read_bytes())
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "not an .npz", output=out)


def test_corrupt_zip(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = data_npz(tmp_path / "good.npz").read_bytes()
    data = tmp_path / "corrupt.npz"
    # Keep the zip directory (at the end) but scramble the member bytes.
    mid = bytearray(good)
    for i in range(64, len(mid) - 200):
        mid[i] ^= 0x5A
    data.write_bytes(bytes(mid))
    res, out = _certify(capsys, model, data, tmp_path)
    assert_refused(res, "corrupt.npz", output=out)


def test_data_is_directory(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "data.npz"
    d.mkdir()
    res, out = _certify(capsys, model, d, tmp_path)
    assert_refused(res, "directory", output=out)


def test_data_missing(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _certify(capsys, model, tmp_path / "nope.npz", tmp_path)
    assert_refused(res, "does not exist", output=out)


def test_bad_model_with_good_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """certify refuses a bad model like bound does (and writes nothing)."""
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x00" * 100)
    res, out = _certify(capsys, p, data_npz(tmp_path / "d.npz"), tmp_path)
    assert_refused(res, output=out)
    assert_no_report(out)
