"""SiLU / erf-GELU / Mish written as primitive ops: fused, bounded by sup |f'|, near misses refused.

Oracles: the constants are checked against a dense grid of the analytic derivative; the network
bound is >= a float64 finite-difference Jacobian lower estimate; torch's own exports (both
exporters) are recognised.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from onnx import helper
from scipy.special import erf, expit

from lipgraph.analyze import analyze
from lipgraph.errors import UnsupportedModelError
from lipgraph.rules.groupsort import GELU_SUP, MISH_SUP, SILU_SUP
from tests.helpers.onnx_oracle import make_model, max_jacobian_norm

X = np.linspace(-30, 30, 1_200_001)


def test_constants_bound_the_derivatives() -> None:
    s = expit(X)
    silu = s + X * s * (1 - s)
    gelu = 0.5 * (1 + erf(X / math.sqrt(2))) + X * np.exp(-X * X / 2) / math.sqrt(2 * math.pi)
    sp = np.logaddexp(0, X)
    t = np.tanh(sp)
    mish = t + X * (1 - t * t) * expit(X)
    for d, c in ((silu, SILU_SUP), (gelu, GELU_SUP), (mish, MISH_SUP)):
        top = float(np.abs(d).max())
        assert top <= c < top + 2e-4


def _w(seed: int, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)


def _silu_model(gate_src: str = "h"):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["x", "V"], ["g"]),
             helper.make_node("Sigmoid", [gate_src], ["s"]), helper.make_node("Mul", ["h", "s"], ["y"])]
    return make_model(nodes, [("x", (1, 6))], ["y"], {"W": _w(0), "V": _w(1)})


def _gelu_model(one: float = 1.0, half_first: bool = False):
    inits = {"W": _w(2), "c": np.array(math.sqrt(2), np.float32), "one": np.array(one, np.float32),
             "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Div", ["h", "c"], ["u"]),
             helper.make_node("Erf", ["u"], ["e"]), helper.make_node("Add", ["e", "one"], ["p"])]
    if half_first:
        nodes += [helper.make_node("Mul", ["h", "half"], ["hh"]), helper.make_node("Mul", ["hh", "p"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["h", "p"], ["q"]), helper.make_node("Mul", ["q", "half"], ["y"])]
    return make_model(nodes, [("x", (1, 6))], ["y"], inits)


@pytest.mark.parametrize(
    ("model", "const"),
    [
        pytest.param(_silu_model, SILU_SUP, id="silu"),
        pytest.param(_gelu_model, GELU_SUP, id="gelu"),
        pytest.param(lambda: _gelu_model(half_first=True), GELU_SUP, id="gelu-half-first"),
    ],
)
def test_fused_and_sound(model, const) -> None:
    m = model()
    a = analyze(m)
    assert [n.domain for n in a.nodes].count("lipgraph") == 1
    w = np.asarray(_w(0 if const == SILU_SUP else 2), dtype=np.float64)
    assert a.bound == pytest.approx(const * np.linalg.svd(w, compute_uv=False)[0], rel=1e-6)
    assert a.bound >= max_jacobian_norm(m, (1, 6), n_points=6) * (1 - 1e-6)


@pytest.mark.parametrize("model", [lambda: _silu_model("g"), lambda: _gelu_model(one=2.0)],
                         ids=["x-sigmoid-y", "add-2"])
def test_near_miss_refused(model) -> None:
    with pytest.raises(UnsupportedModelError):
        analyze(model())


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("act", ["SiLU", "GELU", "Mish"])
def test_torch_exports_recognised(act: str, dynamo: bool, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), getattr(nn, act)(), nn.Linear(8, 3)).eval()
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (torch.randn(1, 6),), path, dynamo=True, opset_version=18, verbose=False)
        else:
            torch.onnx.export(model, (torch.randn(1, 6),), path, dynamo=False, opset_version=17)
    a = analyze(path)
    lower = 0.0
    m64 = model.double()
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        x = torch.randn(1, 6, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(m64, x).reshape(3, 6)
        lower = max(lower, float(torch.linalg.matrix_norm(jac, ord=2)))
    assert a.bound >= lower
    ops = {n.op_type for n in a.nodes}
    assert {"SiLU": "Silu", "GELU": "Gelu", "Mish": "Mish"}[act] in ops  # Mish: ai.onnx op (dynamo) or fused
