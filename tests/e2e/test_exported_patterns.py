"""Ops the README lists, exported by torch 2.13's two exporters (legacy ``dynamo=False``, opset 17;
``dynamo=True``, opset 18), analysed end to end: each export is bounded (or, where no sound bound
exists, refused), never below the truth.

Oracles, independent of lipgraph's rules:
* elementwise activations (exported on a dense grid of 4001 inputs): torch's own derivative in
  float64 on the grid, whose max is a lower estimate of sup |f'|; the bound must be at least that and,
  where lipgraph claims the exact constant, within 0.1 % of it;
* linear ops (adaptive pooling, interpolation, fancy indexing): the exact norm of the dense matrix of
  the exported file, built from onnxruntime's outputs on basis vectors;
* LPPool: torch's float64 Jacobian norm at random points and near every basis vector;
* every export runs in onnxruntime like the torch module (the file is the network).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from lipgraph.analyze import analyze  # noqa: E402
from lipgraph.errors import UnsupportedModelError  # noqa: E402
from tests.helpers.onnx_oracle import exact_norm, runner  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

EXPORTERS = {"legacy": False, "dynamo": True}
GRID = 4001


class Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


ACTIVATIONS = {
    "softplus": nn.Softplus(),
    "softplus-beta2": nn.Softplus(beta=2.0, threshold=10.0),
    "softsign": nn.Softsign(),
    "gelu-tanh": nn.GELU(approximate="tanh"),
    "logsigmoid": nn.LogSigmoid(),
    "softshrink": nn.Softshrink(0.5),
}
# (module, input shape); all linear in the input.
LINEAR = {
    "adaptive-avg-2d": (nn.AdaptiveAvgPool2d((3, 3)), (1, 2, 5, 5)),
    "adaptive-avg-1d": (nn.AdaptiveAvgPool1d(3), (1, 2, 5)),
    "nearest-exact-up": (Fn(lambda x: F.interpolate(x, scale_factor=2, mode="nearest-exact")), (1, 2, 3, 3)),
    "nearest-exact-down": (Fn(lambda x: F.interpolate(x, size=(2, 2), mode="nearest-exact")), (1, 1, 5, 5)),
    "linear-1d": (Fn(lambda x: F.interpolate(x, scale_factor=2, mode="linear")), (1, 2, 5)),
    "linear-1d-corners": (Fn(lambda x: F.interpolate(x, size=7, mode="linear", align_corners=True)), (1, 2, 5)),
    "fancy-index": (Fn(lambda x: x[:, [0, 2, 2, 5]]), (1, 6)),
    "fancy-index-2d": (Fn(lambda x: x[:, :, [0, 2, 2], [1, 3, 3]]), (1, 2, 4, 4)),
}
LPPOOL = {
    "lppool-p4": (nn.LPPool2d(4, 2), (1, 2, 4, 4)),
    "lppool-p2-ceil": (nn.LPPool2d(2, 2, ceil_mode=True), (1, 1, 5, 5)),
    "lppool1d-p4-ceil": (nn.LPPool1d(4, 3, ceil_mode=True), (1, 1, 7)),
}
# torch 2.13's legacy exporter cannot write these at all (it raises): only dynamo exports exist.
LEGACY_CANNOT = {"adaptive-avg-2d", "adaptive-avg-1d", "nearest-exact-up", "nearest-exact-down"}


def _module(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name in ACTIVATIONS:
        return ACTIVATIONS[name].eval(), (1, GRID)
    if name in LINEAR:
        return LINEAR[name][0].eval(), LINEAR[name][1]
    if name == "lppool-p3":
        return nn.LPPool2d(3, 2).eval(), (1, 1, 4, 4)
    return LPPOOL[name][0].eval(), LPPOOL[name][1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pattern_exports")
    cache: dict[tuple[str, str], str] = {}

    def get(name: str, exporter: str) -> str:
        if (name, exporter) not in cache:
            model, shape = _module(name)
            path = str(folder / f"{name}_{exporter}.onnx")
            x = torch.randn(*shape)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    if EXPORTERS[exporter]:
                        torch.onnx.export(
                            model,
                            (x,),
                            path,
                            dynamo=True,
                            opset_version=18,
                            input_names=["x"],
                            verbose=False,
                            optimize=True,
                        )
                    else:
                        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
                except Exception:
                    if exporter == "legacy" and name in LEGACY_CANNOT:
                        pytest.skip("torch's legacy exporter cannot export this op")
                    raise
            cache[(name, exporter)] = path
        return cache[(name, exporter)]

    return get


def _same_as_torch(name: str, path: str) -> None:
    model, shape = _module(name)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32) * 3
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    # The export computes log(sigmoid(x)) in float32, which loses ~1e-4 relative where sigmoid is tiny.
    rtol = 2e-4 if name == "logsigmoid" else 1e-5
    np.testing.assert_allclose(runner(onnx.load(path))({"x": x})[0], want, rtol=rtol, atol=1e-5)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_bound(name: str, exporter: str, exported) -> None:
    path = exported(name, exporter)
    _same_as_torch(name, path)
    if name.startswith("softplus") and exporter == "dynamo":
        # Where(beta x > threshold, x, softplus(beta x) / beta): the branches differ by log1p(exp(-20))
        # ~ 2e-9 at the switch, a real jump. lipgraph does not carry additive jumps: refused, saying so.
        with pytest.raises(UnsupportedModelError, match="jumps by .* dynamo=False"):
            analyze(path)
        return
    bound = analyze(path).bound
    x = torch.linspace(-8, 8, GRID, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(ACTIVATIONS[name].double()(x).sum(), x)
    slope = float(grad.abs().max())
    assert slope <= bound <= slope * 1.001, (slope, bound)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(LINEAR))
def test_linear_op_bound_is_the_exact_norm(name: str, exporter: str, exported) -> None:
    path = exported(name, exporter)
    _same_as_torch(name, path)
    shape = LINEAR[name][1]
    exact = exact_norm(onnx.load(path), shape)
    bound = analyze(path).bound
    assert exact * (1 - 1e-7) <= bound <= exact * (1 + 1e-6), (exact, bound)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", list(LPPOOL))
def test_lppool_bound(name: str, exporter: str, exported) -> None:
    path = exported(name, exporter)
    _same_as_torch(name, path)
    bound = analyze(path).bound
    model, shape = _module(name)
    model = model.double()
    n = int(np.prod(shape))
    gen = torch.Generator().manual_seed(0)
    points = [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(3)]
    points += [
        torch.eye(n, dtype=torch.float64)[i] + 1e-2 * torch.randn(n, generator=gen, dtype=torch.float64)
        for i in range(n)
    ]
    lower = 0.0
    for p in points:
        jac = torch.autograd.functional.jacobian(model, p.reshape(shape)).reshape(-1, n)
        lower = max(lower, float(torch.linalg.matrix_norm(jac, ord=2)))
    assert lower * (1 - 1e-9) <= bound <= lower * 1.01, (lower, bound)  # windows do not overlap: tight


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_lppool_odd_p_refused(exporter: str, exported) -> None:
    # (sum x^3)^(1/3) over a window is NaN where the sum is negative and has an infinite slope at 0.
    with pytest.raises(UnsupportedModelError):
        analyze(exported("lppool-p3", exporter))
