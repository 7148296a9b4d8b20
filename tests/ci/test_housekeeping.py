"""Small things found while using lipgraph as a CI gate: `lipgraph rules`, help texts, the loader's onnx use."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.ci.helpers import run


def test_rules_lists_refused_ops_apart_and_without_trailing_spaces(capsys) -> None:
    rc, out, _ = run(capsys, "rules")
    assert rc == 0
    assert all(line == line.rstrip() for line in out.splitlines())
    bounded, refused = out.split("Refused ops")
    assert "ai.onnx:Relu " in bounded and "ai.onnx:Gemm " in bounded
    for op in ("Exp", "Sign", "ArgMax", "ReduceProd", "MeanVarianceNormalization"):
        assert f"ai.onnx:{op} " not in bounded and f"ai.onnx:{op} " in refused
    exp_line = next(ln for ln in refused.splitlines() if ln.startswith("ai.onnx:Exp "))
    assert "grows without bound" in exp_line  # the op's own reason, not the family's summary
    # an op refused only for some settings (Pow with p != 1) is a bounded op
    assert "ai.onnx:Pow " in bounded


def test_flag_errors_point_to_the_subcommands_help(capsys) -> None:
    rc, _, err = run(capsys, "certify", "m.onnx", "--no-such-flag")
    assert rc == 2 and "`lipgraph certify --help`" in err
    rc, _, err = run(capsys, "bound", "m.onnx", "--format", "xml")
    assert rc == 2 and "`lipgraph bound --help`" in err
    rc, _, err = run(capsys, "no-such-command")
    assert rc == 2 and "`lipgraph --help`" in err


def test_version_help_names_the_packages_version_prints(capsys) -> None:
    rc, out, _ = run(capsys, "--help")
    help_line = " ".join(out.split("--version", 1)[1].split("--debug", 1)[0].split())
    rc2, version, _ = run(capsys, "--version")
    assert rc == rc2 == 0
    printed = {part.strip().split(" ")[0] for part in version.split("(", 1)[1].rstrip(")\n").split(",")}
    named = set(help_line.replace(" and ", ", ").rstrip(".").split("of ", 1)[1].replace(",", " ").split())
    assert printed == named, (printed, named)


def test_quiet_everywhere(capsys, tmp_path) -> None:
    from tests.ci.helpers import DATA, MODEL

    rc, _, err = run(capsys, "-q", "certify", str(MODEL), "--data", str(DATA), "-o", f"json={tmp_path / 'r.json'}")
    assert rc == 0 and err == ""
    rc, out, err = run(capsys, "bound", str(MODEL), "-q")
    assert rc == 0 and err == "" and "Lipschitz bound" in out
    rc, out, err = run(capsys, "-q", "rules")
    assert rc == 0 and err == "" and out


def _model_with_tensors_everywhere() -> onnx.ModelProto:
    """Tensors in initializers, a Constant's attribute and an If branch's Constant (a subgraph)."""

    def branch(name: str, value: float) -> onnx.GraphProto:
        t = numpy_helper.from_array(np.full(3, value, np.float32), f"t_{name}")
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"c_{name}"], value=t)],
            name,
            [],
            [helper.make_tensor_value_info(f"c_{name}", TensorProto.FLOAT, [3])],
        )

    then_g, else_g = branch("then", 1.0), branch("else", 0.0)
    nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(True), "t_k")),
        helper.make_node("If", ["k"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.ones((2, 2), np.float32), "w")],
    )
    return helper.make_model(g)


def test_loader_finds_every_tensor_with_public_fields() -> None:
    from lipgraph import loader

    m = _model_with_tensors_everywhere()
    then_branch = next(a.g for a in m.graph.node[1].attribute if a.name == "then_branch")
    for t in [*m.graph.initializer, m.graph.node[0].attribute[0].t, then_branch.node[0].attribute[0].t]:
        t.data_location = TensorProto.EXTERNAL
    names = sorted(t.name for t in loader._external_tensors(m))
    assert names == ["t_k", "t_then", "w"]
    from pathlib import Path

    src = Path(loader.__file__).read_text(encoding="utf-8")
    assert "_get_all_tensors" not in src  # onnx's private walker breaks on an onnx upgrade


def test_graph_has_no_unused_dag() -> None:
    from lipgraph.graph import Graph

    assert not hasattr(Graph, "dag")
