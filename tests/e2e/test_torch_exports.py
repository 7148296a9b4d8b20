"""Networks exported by torch with BOTH exporters (``dynamo=True``, opset 18, and the legacy
TorchScript exporter, opset 17), analysed end to end.

Oracles, independent of lipgraph's rules:
* the largest Jacobian norm found at random inputs (torch autograd in float64, top singular value)
  is a LOWER estimate of the true constant: every bound must be at least that;
* the onnxruntime output of each export equals the torch output (the file is the network);
* the sorting nets (orthogonal square Linear layers + GroupSort / MaxMin / pair-sort / CReLU) are
  1-Lipschitz by construction: their bound must be <= 1.01, and without the pattern passes the
  generic rules must be visibly looser (showing the passes matter).
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from lipgraph import passes as lg_passes  # noqa: E402
from lipgraph.analyze import analyze  # noqa: E402
from lipgraph.graph_build import build_graph  # noqa: E402
from lipgraph.passes import logits as logits_pass  # noqa: E402
from lipgraph.passes import run_passes  # noqa: E402
from lipgraph.rules.registry import lookup  # noqa: E402
from tests.e2e import nets  # noqa: E402
from tests.helpers.onnx_oracle import runner  # noqa: E402

pytestmark = pytest.mark.torch

EXPORTERS = {"legacy": False, "dynamo": True}
SORTING = ["groupsort", "maxmin", "pairsort", "crelu"]
CONV_NETS = {"cnn", "preact", "l2pool"}
ALL = ["mlp", "mlp_bn", "cnn", "preact", "l2pool", *SORTING]
FUSED_OP = {"groupsort": "GroupSort", "maxmin": "MaxMin", "pairsort": "PairSort", "crelu": "CReLU"}
# What each exporter writes for one unit, after lipgraph folds the constant shape arithmetic
# (torch 2.13; data-path ops between two Gemms). Pinned so that a change of exporter is noticed.
PATTERNS = {
    ("groupsort", "legacy"): ["Reshape", "TopK", "Reshape"],
    ("groupsort", "dynamo"): ["Reshape", "TopK", "Reshape"],
    ("maxmin", "legacy"): ["Slice", "Slice", "Max", "Min", "Concat"],
    ("maxmin", "dynamo"): ["Split", "Max", "Min", "Concat"],
    ("pairsort", "legacy"): ["Reshape", "ReduceMin", "ReduceMax", "Concat", "Reshape"],
    ("pairsort", "dynamo"): ["Reshape", "ReduceMin", "ReduceMax", "Concat", "Reshape"],
    ("crelu", "legacy"): ["Relu", "Neg", "Relu", "Concat"],
    ("crelu", "dynamo"): ["Relu", "Neg", "Relu", "Concat"],
}
L2POOL_PATTERN = ["Pow", "AveragePool", "Sign", "Abs", "Relu", "Mul", "Mul", "Pow"]


def _has_conv_rule() -> bool:
    return lookup("ai.onnx", "Conv", 18) is not None


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(name, exporter) -> path``, each export done once per session (exports are slow)."""
    folder = tmp_path_factory.mktemp("torch_exports")
    cache: dict[tuple[str, str], str] = {}

    def get(name: str, exporter: str) -> str:
        key = (name, exporter)
        if key not in cache:
            path = str(folder / f"{name}_{exporter}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nets.export(nets.make(name), nets.INPUT_SHAPES[name], path, EXPORTERS[exporter])
            cache[key] = path
        return cache[key]

    return get


def jacobian_lower(name: str, n_points: int = 6, seed: int = 0) -> float:
    """max over random inputs of ||J(x)||_2 of the torch model in float64 (a LOWER estimate of L)."""
    model = copy.deepcopy(nets.make(name)).double().eval()
    gen = torch.Generator().manual_seed(seed)
    shape = nets.INPUT_SHAPES[name]
    best = 0.0
    for _ in range(n_points):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(model, x).reshape(-1, x.numel())
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def _skip_without_conv(name: str) -> None:
    if name in CONV_NETS and not _has_conv_rule():
        pytest.skip("the Conv rule (lipgraph/rules/conv.py) is not there yet")


def _bound_without_patterns(path: str, monkeypatch) -> float:
    monkeypatch.setattr(lg_passes, "default_passes", lambda: [logits_pass.cut_final_softmax])
    return analyze(path).bound


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", ALL)
def test_export_runs_like_torch(name: str, exporter: str, exported) -> None:
    path = exported(name, exporter)
    x = np.random.default_rng(1).standard_normal(nets.INPUT_SHAPES[name]).astype(np.float32)
    with torch.no_grad():
        want = nets.make(name)(torch.from_numpy(x)).numpy()
    got = runner(onnx.load(path))({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", ALL)
def test_bound_is_above_jacobian_norm(name: str, exporter: str, exported) -> None:
    _skip_without_conv(name)
    a = analyze(exported(name, exporter))
    lower = jacobian_lower(name)
    assert a.bound >= lower * (1 - 1e-9), (a.bound, lower)
    assert math.isfinite(a.bound)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", SORTING)
def test_sorting_nets_are_certified_one_lipschitz(name: str, exporter: str, exported) -> None:
    path = exported(name, exporter)
    a = analyze(path)
    fused = [n for n in a.nodes if n.op_type == FUSED_OP[name]]
    assert len(fused) == 2 and all(n.domain == "lipgraph" and n.bound == 1.0 for n in fused)
    assert all(len(n.origin) >= 3 for n in fused)  # each stands for the whole exported subgraph
    lower = jacobian_lower(name)
    assert lower * (1 - 1e-9) <= a.bound <= 1.01, (lower, a.bound)


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", SORTING)
def test_exporter_patterns(name: str, exporter: str, exported) -> None:
    """The op sequence each exporter writes for one unit (the patterns the pass must match)."""
    g = build_graph(onnx.load(exported(name, exporter)))
    ops = [n.op_type for n in g.nodes]
    first, second = [i for i, op in enumerate(ops) if op == "Gemm"][:2]
    assert ops[first + 1:second] == PATTERNS[(name, exporter)]


@pytest.mark.parametrize("exporter", list(EXPORTERS))
@pytest.mark.parametrize("name", ["maxmin", "pairsort", "crelu"])
def test_without_pattern_passes_the_bound_is_looser(name: str, exporter: str, exported, monkeypatch) -> None:
    """Generic rules: Max and Min of two halves each sqrt(2), joined by Concat; CReLU / pair-sort sqrt(2)."""
    path = exported(name, exporter)
    with_passes = analyze(path).bound
    without = _bound_without_patterns(path, monkeypatch)
    per_layer = 2.0 if name == "maxmin" else math.sqrt(2.0)
    assert without >= per_layer**2 * (1 - 1e-6)  # two sorting layers, orthogonal Linear layers
    assert without > 1.9 * with_passes


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_batchnorm_folding_tightens_mlp(exporter: str, exported, monkeypatch) -> None:
    path = exported("mlp_bn", exporter)
    a = analyze(path)
    assert "BatchNormalization" not in [n.op_type for n in a.nodes]
    without = _bound_without_patterns(path, monkeypatch)
    lower = jacobian_lower("mlp_bn")
    assert lower * (1 - 1e-9) <= a.bound < without


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_l2_pooling_becomes_lppool(exporter: str, exported) -> None:
    model = onnx.load(exported("l2pool", exporter))
    raw = [n.op_type for n in model.graph.node if n.op_type not in ("Constant",)]
    start = raw.index("Pow")
    assert raw[start:start + len(L2POOL_PATTERN)] == L2POOL_PATTERN
    g = build_graph(model)
    run_passes(g)
    ops = [n.op_type for n in g.nodes]
    assert "LpPool" in ops and "Pow" not in ops and "Sign" not in ops
    lp = g.nodes[ops.index("LpPool")]
    assert lp.attrs["p"] == 2 and lp.attrs["kernel_shape"] == [2, 2] and lp.attrs["strides"] == [2, 2]


@pytest.mark.parametrize("exporter", list(EXPORTERS))
def test_preact_bn_folded_across_relu(exporter: str, exported) -> None:
    """BN -> Relu -> Conv (pre-activation): the BN goes into the Conv with |s| (some gammas < 0)."""
    g = build_graph(onnx.load(exported("preact", exporter)))
    run_passes(g)
    ops = [n.op_type for n in g.nodes]
    assert ops.count("BatchNormalization") == 1  # bn3 feeds Relu -> ReduceMean, which is not folded into
    assert any("across" in w for w in g.warnings)


@pytest.mark.parametrize("name", ["cnn", "preact"])
def test_legacy_export_without_constant_folding_keeps_function(name: str, tmp_path) -> None:
    """With ``do_constant_folding=False`` the legacy exporter keeps every BatchNormalization: the
    fold pass must absorb those next to a Conv, and the rewritten graph must compute the same logits."""
    from tests.passes.graphio import graph_to_model

    model = nets.make(name)
    shape = nets.INPUT_SHAPES[name]
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(*shape),), path, dynamo=False, opset_version=17,
                          do_constant_folding=False, input_names=["x"], output_names=["logits"])
    raw = onnx.load(path)
    assert sum(n.op_type == "BatchNormalization" for n in raw.graph.node) >= 3
    g = build_graph(raw)
    run_passes(g)
    left = [n.op_type for n in g.nodes].count("BatchNormalization")
    assert left == (0 if name == "cnn" else 1)  # preact: bn3 -> Relu -> ReduceMean stays
    if any("bound-only" in w for w in g.warnings):
        return  # |s| folded across an activation: the values differ on purpose (the bound is the point)
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = runner(graph_to_model(g))({"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
