"""The walker: every node without a sound bound is named, once, in one line each (issue 2, item 6)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lipgraph import analyze
from lipgraph.cli import main
from lipgraph.errors import UnsupportedModelError
from tests.helpers.onnx_oracle import make_model, max_jacobian_norm, spectral

LINE = re.compile(r"^(?P<domain>[\w.]+):(?P<op>\w+)@(?P<opset>\d+) (?P<node>\S+): (?P<reason>.+)$")


def _bad_model() -> onnx.ModelProto:
    """Four unsupported nodes on separate branches, joined by a Sum, then one more good op."""
    w = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Exp", ["x"], ["e"], name="the_exp"),
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("Frobnicate", ["x"], ["f"], name="custom", domain="com.example"),
        helper.make_node("Sign", ["x"], ["s"], name="the_sign"),
        helper.make_node("Relu", ["x"], ["r"], name="fine_relu"),
        helper.make_node("Sum", ["e", "sq", "f", "s", "r"], ["t"], name="join"),
        helper.make_node("MatMul", ["t", "W"], ["y"], name="head"),
    ]
    return make_model(nodes, [("x", ["N", 4])], ["y"], {"W": w}, opset=17, extra_opsets={"com.example": 3})


EXPECTED = {
    ("ai.onnx", "Exp", "17", "the_exp"),
    ("ai.onnx", "Mul", "17", "square"),
    ("com.example", "Frobnicate", "3", "custom"),
    ("ai.onnx", "Sign", "17", "the_sign"),
    # The custom op leaves its output shape unknown, so the Sum cannot count broadcasts: named too,
    # with a note that it may only be an echo of the custom op.
    ("ai.onnx", "Sum", "17", "join"),
}


def test_analyze_collects_every_refusal() -> None:
    with pytest.raises(UnsupportedModelError) as exc:
        analyze(_bad_model())
    got = {(r.domain, r.op_type, str(r.opset), r.node_name) for r in exc.value.refusals}
    assert got == EXPECTED  # the MatMul after them is not blamed
    assert all(r.reason for r in exc.value.refusals)
    reasons = {r.node_name: r.reason for r in exc.value.refusals}
    assert "upstream" in reasons["join"] and "upstream" not in reasons["the_exp"]


def test_intrinsic_refusal_after_a_shapeless_custom_op_is_named() -> None:
    nodes = [
        helper.make_node("Frobnicate", ["x"], ["f"], name="custom", domain="com.example"),
        helper.make_node("Exp", ["f"], ["y"], name="after"),
    ]
    model = make_model(nodes, [("x", [1, 3])], ["y"], opset=17, extra_opsets={"com.example": 1})
    with pytest.raises(UnsupportedModelError) as exc:
        analyze(model)
    assert [r.node_name for r in exc.value.refusals] == ["custom", "after"]


def test_cli_names_all_unsupported_nodes_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(path))
    rc = main(["bound", str(path)])
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if LINE.match(ln)]
    got = {(m["domain"], m["op"], m["opset"], m["node"]) for m in map(LINE.match, lines)}
    assert got == EXPECTED
    assert len(lines) == len(EXPECTED)
    reasons = {m["op"]: m["reason"] for m in map(LINE.match, lines)}
    assert "exp" in reasons["Exp"].lower()
    assert "com.example" in reasons["Frobnicate"]


def test_unsupported_node_behind_a_refused_one_is_named_too() -> None:
    # Exp -> Sign: fixing the Exp would not make the Sign sound, so both are named.
    nodes = [
        helper.make_node("Exp", ["x"], ["e"], name="first"),
        helper.make_node("Sign", ["e"], ["s"], name="second"),
        helper.make_node("Relu", ["s"], ["y"], name="third"),
    ]
    with pytest.raises(UnsupportedModelError) as exc:
        analyze(make_model(nodes, [("x", [1, 3])], ["y"], opset=17))
    assert [r.node_name for r in exc.value.refusals] == ["first", "second"]


def test_cli_debug_shows_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(path))
    assert main(["--debug", "bound", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_refusals_through_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(path))
    proc = subprocess.run([sys.executable, "-m", "lipgraph", "bound", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert sum(1 for ln in proc.stderr.splitlines() if LINE.match(ln)) == len(EXPECTED)


def test_integer_data_path_is_refused() -> None:
    # Cast of the data to int64 then back: a discontinuous staircase. Refused where it happens.
    nodes = [
        helper.make_node("Cast", ["x"], ["xi"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Cast", ["xi"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    model = make_model(nodes, [("x", [1, 3])], ["y"], opset=17)
    with pytest.raises(UnsupportedModelError) as exc:
        analyze(model)
    names = {r.node_name for r in exc.value.refusals}
    assert "to_int" in names


def test_branches_and_joins_compose_by_spec_table() -> None:
    # y = concat(x A, relu(x B)) + max(x A', x B') ... checked against SPEC sec. 3 and an oracle.
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2))
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["xa"]),
        helper.make_node("MatMul", ["x", "B"], ["xb"]),
        helper.make_node("Relu", ["xb"], ["rb"]),
        helper.make_node("Concat", ["xa", "rb"], ["c"], axis=1),
        helper.make_node("Max", ["xa", "xb"], ["m"]),
        helper.make_node("Concat", ["m", "m"], ["mm"], axis=1),
        helper.make_node("Add", ["c", "mm"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 4])], ["y"], {"A": a, "B": b}, opset=17)
    res = analyze(model)
    la, lb = spectral(a), spectral(b)
    concat = math.hypot(la, lb)
    mx = math.hypot(la, lb)
    want = concat + math.sqrt(2) * mx
    assert want <= res.bound <= want * (1 + 1e-6)
    assert max_jacobian_norm(model, [1, 4], n_points=6) <= res.bound * (1 + 1e-6)
    # The per-node table's cumulative column is the bound of each node's output.
    assert res.nodes[-1].cumulative == pytest.approx(res.bound)
    assert res.bound_of("c") == pytest.approx(concat)
