"""Symbolic input sizes: `bound` says what it assumes; a concrete size (certify's data, --input-shape) needs nothing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lipgraph import analyze, certify  # noqa: E402
from lipgraph.cli import main  # noqa: E402
from lipgraph.errors import ModelLoadError, UnsupportedModelError  # noqa: E402


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = h + self.c2(h)
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def symbolic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sym") / "sym.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Residual().eval(), (torch.randn(2, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "N", 2: "H", 3: "W"}})
    return path


def test_bound_on_unprovable_symbolic_sizes_refuses_naming_the_fix(symbolic_model: Path) -> None:
    """A residual join of two conv outputs of symbolic size: nothing proves they are equal (a strided
    conv would make one of them 1 and broadcast it), so no assumed bound: a refusal naming the flag."""
    with pytest.raises(UnsupportedModelError, match="--input-shape"):
        analyze(symbolic_model)


def test_concrete_shape_needs_no_assumption(symbolic_model: Path) -> None:
    tight = analyze(symbolic_model, input_shape=(1, 3, 16, 16))
    assert not any("assumed" in w for w in tight.warnings)
    # still an upper bound: compare with the exact Jacobian norm of the torch model at random points
    torch.manual_seed(0)
    net = _Residual().eval()
    net.load_state_dict(_weights_of(symbolic_model))
    net = net.double()
    best = 0.0
    for _ in range(5):
        x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(net, x).reshape(10, -1)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    assert best <= tight.bound * (1 + 1e-9)


def _weights_of(path: Path) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in onnx.load(str(path)).graph.initializer}
    return {k: v for k, v in inits.items() if k in _Residual().state_dict()}


def test_certify_bounds_at_the_data_size(symbolic_model: Path) -> None:
    x = np.random.default_rng(0).random((8, 3, 16, 16)).astype(np.float32)
    cert = certify(str(symbolic_model), x)
    assert cert.lipschitz_bound == pytest.approx(analyze(symbolic_model, input_shape=(1, 3, 16, 16)).bound, rel=1e-12)


def test_cli_input_shape(symbolic_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    assert main(["bound", str(symbolic_model), "--input-shape", "1x3x16x16", "--format", "json", "-o", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["lipschitz_bound"] == pytest.approx(analyze(symbolic_model, input_shape=(1, 3, 16, 16)).bound)
    assert main(["bound", str(symbolic_model), "--input-shape", "1xAx3"]) == 2
    assert "--input-shape" in capsys.readouterr().err


def test_fixed_dimension_must_agree(symbolic_model: Path) -> None:
    with pytest.raises(ModelLoadError, match="axis 1"):
        analyze(symbolic_model, input_shape=(1, 4, 16, 16))


def test_scaling_on_symbolic_sizes_proven_equal_by_inference() -> None:
    """Mul by a per-row constant on a tensor whose other axis is symbolic: shape inference names the
    output's axis 'W' like the input's, which proves no broadcast along it: no assumption needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c = np.array([[2.0], [-3.0]], dtype=np.float32)  # (2, 1): broadcast along the symbolic axis
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "c"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "W"])],
        [numpy_helper.from_array(c, "c")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    a = analyze(m)
    assert a.bound == pytest.approx(3.0)
    assert not any("assumed" in w for w in a.warnings)
    fixed = analyze(m, input_shape=(1, 2, 5))
    assert fixed.bound == pytest.approx(3.0) and not fixed.warnings
