"""Bad models through the real CLI: each is refused with exit 2, one line, no traceback, no report.

Every case runs ``lipgraph bound MODEL --format json -o OUT`` in-process and checks that ``OUT`` (and
any temp file of the atomic writer) does not exist afterwards; a few also run as real subprocesses.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.security.helpers import (
    assert_refused,
    mlp_model,
    run_cli,
    run_subprocess,
    save,
)

pytestmark = pytest.mark.filterwarnings("ignore")


def _bound(capsys: pytest.CaptureFixture[str], model: Path, tmp_path: Path, *extra: str):  # noqa: ANN202
    out = tmp_path / "report" / "bound.json"
    out.parent.mkdir(exist_ok=True)
    res = run_cli(["bound", model, "--format", "json", "-o", out, *extra], capsys)
    return res, out


def test_valid_model_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The control: the same command on a good model exits 0 and writes the report (so the refusals
    below are about the input, not about the command line)."""
    res, out = _bound(capsys, save(mlp_model(), tmp_path / "m.onnx"), tmp_path)
    assert res.rc == 0, res.err
    assert json.loads(out.read_text())["lipschitz_bound"] > 0


def test_random_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "random.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "random.onnx", output=out)


def test_truncated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = mlp_model(n_in=32, n_hidden=32).SerializeToString()
    p = tmp_path / "truncated.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "truncated.onnx", output=out)


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "empty", output=out)


def test_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "model.onnx"
    d.mkdir()
    res, out = _bound(capsys, d, tmp_path)
    assert_refused(res, "directory", output=out)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res, out = _bound(capsys, tmp_path / "nope.onnx", tmp_path)
    assert_refused(res, "does not exist", output=out)


# ---------------------------------------------------------------------------- external data
def _external(tmp_path: Path, folder: str, location: str) -> Path:
    """A model in ``tmp_path/folder`` whose weights live in an external file; then its location is
    rewritten to ``location`` (what a hostile file would do)."""
    d = tmp_path / folder
    d.mkdir(parents=True, exist_ok=True)
    p = d / "model.onnx"
    onnx.save(mlp_model(n_in=64, n_hidden=64), str(p), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    p.write_bytes(m.SerializeToString())
    return p


def test_external_data_relative_escape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The data file exists one folder up: readable, but outside the model's folder.
    p = _external(tmp_path, "inner", "../weights.bin")
    (tmp_path / "inner" / "weights.bin").rename(tmp_path / "weights.bin")
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "outside the model's folder", output=out)


def test_external_data_symlink_escape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A link inside the folder that points outside it is an escape too.
    p = _external(tmp_path, "inner", "link.bin")
    (tmp_path / "inner" / "weights.bin").rename(tmp_path / "secret.bin")
    (tmp_path / "inner" / "link.bin").symlink_to(tmp_path / "secret.bin")
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "outside the model's folder", output=out)


def test_external_data_absolute_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _external(tmp_path, "inner", "")
    real = (tmp_path / "inner" / "weights.bin").resolve()
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = str(real)  # the file exists: only the absolute form is wrong
    p.write_bytes(m.SerializeToString())
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "absolute", output=out)


def test_external_data_absolute_system_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _external(tmp_path, "inner", "/etc/passwd")
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "absolute", output=out)


def test_external_data_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _external(tmp_path, "inner", "weights.bin")
    (tmp_path / "inner" / "weights.bin").unlink()
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "missing", output=out)


# ---------------------------------------------------------------------------- graph content
def test_two_float_inputs_without_input_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [helper.make_node("Add", ["a", "b"], ["logits"], name="add")]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = save(m, tmp_path / "two.onnx")
    res, out = _bound(capsys, p, tmp_path)
    assert_refused(res, "--input", "a, b", output=out)
    # ... and naming one works (the other input is then a non-certified constant-free operand).
    res2, out2 = _bound(capsys, p, tmp_path, "--input", "a")
    assert res2.rc in (0, 2) and "internal error" not in res2.err
    # --input naming no input is refused as well.
    res3, out3 = _bound(capsys, p, tmp_path, "--input", "zzz")
    assert_refused(res3, "zzz", output=out3)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights(bad: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    w = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[1, 2] = bad
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w1"))
    res, out = _bound(capsys, save(m, tmp_path / "nan.onnx"), tmp_path)
    assert_refused(res, "fc1", "NaN or Inf", output=out, node_list=True)


def test_non_finite_bias_is_harmless_or_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN bias does not change the Lipschitz constant of the weights, but the network computes
    NaN: the bound command may answer (bias never enters a bound) or refuse, never crash."""
    m = mlp_model()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(6, np.nan, np.float32), "b1"))
    res, out = _bound(capsys, save(m, tmp_path / "nanbias.onnx"), tmp_path)
    if res.rc == 0:
        assert math.isfinite(json.loads(out.read_text())["lipschitz_bound"])
    else:
        assert_refused(res, output=out, node_list="without a sound" in res.err)


def test_unknown_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    m.opset_import[0].version = 999
    res, out = _bound(capsys, save(m, tmp_path / "opset.onnx"), tmp_path)
    assert_refused(res, "opset 999", "upgrade onnx", output=out)


def test_no_default_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    del m.opset_import[:]
    res, out = _bound(capsys, save(m, tmp_path / "noopset.onnx"), tmp_path)
    assert_refused(res, "opset", output=out)


def test_custom_domain_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    m.graph.node[1].op_type = "FancyAct"
    m.graph.node[1].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    res, out = _bound(capsys, save(m, tmp_path / "custom.onnx"), tmp_path)
    line = assert_refused(res, "com.example:FancyAct", "relu", output=out, node_list=True)
    assert "custom-domain" in line


def test_unknown_standard_op_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    m.graph.node[1].op_type = "NotAnOp"
    res, out = _bound(capsys, save(m, tmp_path / "notanop.onnx"), tmp_path)
    assert_refused(res, "NotAnOp", output=out, node_list=True)


def test_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    # fc1 reads x + logits: fc1 -> relu -> fc2 -> add -> fc1 is a cycle.
    m.graph.node.append(helper.make_node("Add", ["x", "logits"], ["xl"], name="loop_add"))
    m.graph.node[0].input[0] = "xl"
    res, out = _bound(capsys, save(m, tmp_path / "cycle.onnx"), tmp_path)
    assert_refused(res, "cycle", output=out)


def test_dangling_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = mlp_model()
    m.graph.node[1].input[0] = "ghost"
    res, out = _bound(capsys, save(m, tmp_path / "dangling.onnx"), tmp_path)
    assert_refused(res, "ghost", output=out)


# ---------------------------------------------------------------------------- huge declared shapes
_HUGE_CONV = """
import resource, sys, time
from pathlib import Path
import numpy as np
from onnx import TensorProto, helper, numpy_helper
path = Path(sys.argv[1])
case = sys.argv[2]
if case == "conv":
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["h"], ["logits"], name="flat")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])
    inits = [numpy_helper.from_array(w, "w")]
elif case == "constant":  # a 200-byte file whose constant subgraph would fill 1.6 GB (4e8 floats)
    nodes = [helper.make_node("ConstantOfShape", ["shp"], ["big"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
             helper.make_node("Mul", ["x", "s"], ["logits"], name="scale")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    inits = [numpy_helper.from_array(np.array([400_000_000], np.int64), "shp")]
else:  # a Gemm weight whose declared dims (1e6 x 1e6) lie about its 64 bytes of data
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1000000, 1000000])
    t.raw_data = np.ones(16, np.float32).tobytes()
    nodes = [helper.make_node("Gemm", ["x", "w"], ["logits"], name="fc")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000000])
    inits = [t]
g = helper.make_graph(nodes, "huge", [x], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 9
path.write_bytes(m.SerializeToString())
# No memory blow-up: lipgraph must answer inside a 3 GiB address space (the dense operator would
# need 10^10 x 10^10 entries; a materialised input 1.2e11 bytes).
limit = 3 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from lipgraph.cli import main
t0 = time.perf_counter()
rc = main(["bound", str(path), "--format", "json"])
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RC={rc} T={time.perf_counter() - t0:.2f} RSS_MB={rss_mb:.0f}")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and ru_maxrss in KiB are Linux behaviour")
@pytest.mark.parametrize("case", ["conv", "gemm_lie", "constant"])
def test_huge_declared_shapes(case: str, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.security.helpers import ROOT

    script = tmp_path / "huge.py"
    script.write_text(_HUGE_CONV)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / f"{case}.onnx"), case], env=env,
                          capture_output=True, text=True, timeout=120)
    tail = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and tail and tail[-1].startswith("RC="), proc.stdout + proc.stderr
    fields = dict(kv.split("=") for kv in tail[-1].split())
    assert float(fields["T"]) < 60, tail[-1]
    assert float(fields["RSS_MB"]) < 1500, tail[-1]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "out of memory" not in proc.stderr, proc.stderr
    if case == "constant":
        # The constant is too large to fold, so the factor is unknown: refused, never computed.
        assert fields["RC"] == "2" and "scale" in proc.stderr, proc.stderr
        # Materialising the constant alone takes 1526 MB; the run normally peaks near 70 MB. The
        # margin is wide because one loaded full-suite run once read 810 MB (not reproduced).
        assert float(fields["RSS_MB"]) < 1000, tail[-1]
    elif case == "gemm_lie":
        # 64 bytes cannot hold a 10^12-element weight: the model is malformed and must be refused.
        assert fields["RC"] == "2", proc.stderr
        err = [ln for ln in proc.stderr.splitlines() if ln.startswith("lipgraph:")]
        assert len(err) == 1 and err[0].startswith("lipgraph: error:"), proc.stderr
    else:
        # A Conv on a declared 10^5 x 10^5 input: a bound from the kernel alone (no input-size
        # dependent method fits) or a clear refusal; either way fast and small.
        assert fields["RC"] in ("0", "2"), proc.stderr
        if fields["RC"] == "0":
            bound = json.loads(proc.stdout[: proc.stdout.rindex("RC=")])["lipschitz_bound"]
            assert math.isfinite(bound) and bound > 0


# ---------------------------------------------------------------------------- real processes
def test_subprocess_random_bytes_and_debug(tmp_path: Path) -> None:
    """The console entry point: one line without --debug; a traceback (and still exit 2) with it."""
    p = tmp_path / "random.onnx"
    p.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
    out = tmp_path / "r.json"
    res = run_subprocess(["bound", p, "--format", "json", "-o", out], cwd=tmp_path)
    assert_refused(res, "not a readable ONNX model", output=out)
    dbg = run_subprocess(["--debug", "bound", p, "-o", out], cwd=tmp_path)
    assert dbg.rc == 2
    assert "Traceback" in dbg.err and dbg.err.rstrip().splitlines()[-1].startswith("lipgraph: error:")
    assert not out.exists()


def test_subprocess_external_escape(tmp_path: Path) -> None:
    p = _external(tmp_path, "inner", "../../weights.bin")
    res = run_subprocess(["bound", p], cwd=tmp_path)
    assert_refused(res, "outside the model's folder")
