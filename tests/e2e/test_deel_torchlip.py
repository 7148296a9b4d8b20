"""lipgraph against an independent 1-Lipschitz library: deel-torchlip (issue 2).

A small network of SpectralConv2d, GroupSort2, ScaledL2NormPool2d, SpectralLinear and FrobeniusLinear
is trained for a few steps on random data (so that the spectral-normalisation and Björck
parametrisations move), turned into plain torch layers with ``vanilla_export()``, exported with both
torch exporters and analysed. The oracles are independent of lipgraph:

* the largest Jacobian norm at random inputs (torch autograd in float64) is a LOWER estimate of the
  network constant: the bound must be at least that;
* each exported Conv/Linear's EXACT operator norm on its true input size (dense matrix built by
  feeding basis vectors through the torch layer, then an SVD). deel-torchlip claims each is <= 1;
  the bound must stay <= 1.05 unless a layer is truly above 1, and then lipgraph's per-node bound must
  sit within a few % of that exact norm (so the excess is deel's, not lipgraph's).

A second test checks lipgraph against deel's *average-overlap* conv coefficient (research/bounds.md
sec. 5): a 3x3 mean kernel normalised with that coefficient on 32x32 is 1.015-Lipschitz, and the
bound must see it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchlip = pytest.importorskip("deel.torchlip")

from torch import nn  # noqa: E402

from lipgraph import analyze  # noqa: E402

pytestmark = pytest.mark.torch

IN_SHAPE = (1, 1, 16, 16)
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
# The two patterns the pattern passes recognise (tests below print what the exporters write).
GROUPSORT2_OPS = ["Reshape", "ReduceMin", "ReduceMax", "Concat", "Reshape"]
L2POOL_OPS = ["Pow", "AveragePool", "Sign", "Abs", "Relu", "Mul"]


def build_trained_vanilla(head: str = "frobenius", seed: int = 0, steps: int = 5) -> nn.Module:
    """A deel-torchlip CNN, a few Adam steps in train mode, then ``vanilla_export()`` (eval mode).

    ``head``: "frobenius" is ``FrobeniusLinear`` with deel's default ``disjoint_neurons=True`` (each
    row has norm 1: every logit is 1-Lipschitz, the logit VECTOR is not, up to sqrt(10)); "spectral"
    is a ``SpectralLinear`` head (the whole net is meant to be 1-Lipschitz in L2).
    """
    torch.manual_seed(seed)
    last = torchlip.FrobeniusLinear(32, 10) if head == "frobenius" else torchlip.SpectralLinear(32, 10)
    model = torchlip.Sequential(
        torchlip.SpectralConv2d(1, 8, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        torchlip.SpectralConv2d(8, 16, 3, padding=1),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(2),
        nn.Flatten(),
        torchlip.SpectralLinear(16 * 4 * 4, 32),
        torchlip.GroupSort2(),
        last,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(16, *IN_SHAPE[1:], generator=gen)
        y = torch.randint(0, 10, (16,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        vanilla = model.vanilla_export().eval()
        x = torch.rand(4, *IN_SHAPE[1:], generator=gen)
        # vanilla_export must not change the function.
        assert torch.allclose(model(x), vanilla(x), atol=1e-5)
    return vanilla


def export(model: nn.Module, path: str, dynamo: bool) -> None:
    x = torch.rand(*IN_SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, input_names=["x"],
                              output_names=["logits"], verbose=False)
        else:
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["logits"])


def exact_layer_norms(model: nn.Module) -> list[tuple[str, float]]:
    """(layer, exact L2 operator norm) of each Conv2d/Linear on its true input size (float64)."""
    out: list[tuple[str, float]] = []
    x = torch.zeros(*IN_SHAPE, dtype=torch.float64)
    with torch.no_grad():
        for name, layer in model.named_children():
            layer64 = _as_float64(layer)
            if isinstance(layer, nn.Conv2d):
                out.append((f"{name}:Conv2d{tuple(x.shape[1:])}", conv_exact_norm(layer64, tuple(x.shape[1:]))))
            elif isinstance(layer, nn.Linear):
                out.append((f"{name}:Linear{tuple(layer.weight.shape)}",
                            float(torch.linalg.matrix_norm(layer64.weight, ord=2))))
            x = layer64(x)
    return out


def conv_exact_norm(conv: nn.Module, chw: tuple[int, ...]) -> float:
    """Largest singular value of the conv's dense matrix: columns conv(e_j) - conv(0)."""
    n = int(np.prod(chw))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *chw)
    zero = torch.zeros(1, *chw, dtype=torch.float64)
    with torch.no_grad():
        cols = (conv(basis) - conv(zero)).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols.T, ord=2))


def _as_float64(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer).double()


def max_jacobian_norm(model: nn.Module, n: int = 16, seed: int = 1) -> float:
    """Largest ||J(x)||_2 over random inputs (uniform in [0,1] and Gaussian): a lower estimate of L."""
    m64 = _as_float64(model)
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for i in range(n):
        x = torch.rand(*IN_SHAPE, generator=gen, dtype=torch.float64) if i % 2 else \
            torch.randn(*IN_SHAPE, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(m64, x, vectorize=True).reshape(10, -1)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


def op_sequence(path: str) -> list[str]:
    import onnx

    return [n.op_type for n in onnx.load(path).graph.node if n.op_type != "Constant"]


def _contains(seq: list[str], pattern: list[str]) -> bool:
    return any(seq[i:i + len(pattern)] == pattern for i in range(len(seq) - len(pattern) + 1))


@pytest.fixture(scope="module", params=["frobenius", "spectral"])
def vanilla(request: pytest.FixtureRequest) -> nn.Module:
    return build_trained_vanilla(request.param)


@pytest.fixture(scope="module")
def exact(vanilla: nn.Module) -> list[tuple[str, float]]:
    return exact_layer_norms(vanilla)


@pytest.fixture(scope="module")
def jac_lower(vanilla: nn.Module) -> float:
    return max_jacobian_norm(vanilla)


@pytest.fixture(scope="module", params=[False, True], ids=["legacy", "dynamo"])
def exported(request: pytest.FixtureRequest, vanilla: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("deel") / f"deel_{'dynamo' if request.param else 'legacy'}.onnx")
    try:
        export(vanilla, path, dynamo=request.param)
    except Exception as exc:  # an exporter that cannot handle the model is not lipgraph's failure
        pytest.skip(f"torch exporter (dynamo={request.param}) failed: {exc!r:.200}")
    return path


def test_exported_patterns(exported: str) -> None:
    """The exporters write GroupSort2 and L2-norm pooling as the chains the passes recognise."""
    seq = op_sequence(exported)
    print(exported, "->", " ".join(seq))
    assert _contains(seq, GROUPSORT2_OPS), seq
    assert _contains(seq, L2POOL_OPS) and "Pow" in seq, seq


def test_bound_vs_exact_and_jacobian(exported: str, exact: list[tuple[str, float]], jac_lower: float) -> None:
    analysis = analyze(exported)
    bound = analysis.bound
    rows = [n for n in analysis.nodes if n.op_type in LINEAR_OPS]
    print(f"\nbound {bound:.6f}  max Jacobian norm {jac_lower:.6f}")
    for (name, norm), row in zip(exact, rows, strict=False):
        print(f"  {name:<28} exact {norm:.6f}  lipgraph {row.op_type} {row.bound:.6f} ({row.method})")
    for n in analysis.nodes:
        print(f"  node {n.op_type:<14} {n.bound:10.6f} {n.cumulative:10.6f} {n.method}")

    # Soundness against an independent lower estimate.
    assert bound >= jac_lower * (1 - 1e-6), (bound, jac_lower)
    # Per layer: lipgraph's linear-op bounds are sound and tight against the exact norms.
    if len(rows) == len(exact):
        for (name, norm), row in zip(exact, rows, strict=True):
            assert row.bound >= norm * (1 - 1e-6), (name, row.bound, norm)
            assert row.bound <= 1.10 * norm + 1e-9, (name, row.bound, norm)
    # Tightness: <= 1.05, or the excess is explained by layers whose exact norm is above 1.
    excess = math.prod(max(1.0, norm) for _, norm in exact)
    assert bound <= 1.05 * excess, (bound, exact)
    if bound > 1.05:
        above = [(name, norm) for name, norm in exact if norm > 1.0]
        assert above, f"bound {bound} > 1.05 with every layer exactly <= 1: {exact}"


def test_average_overlap_coefficient_is_not_one_lipschitz() -> None:
    """deel's zero-pad stride-1 conv coefficient (average overlap) leaves a 3x3 mean kernel 1.015-Lipschitz.

    The kernel has ||W'||_2 = 1 (reshaped 1x9), is scaled by deel's own ``compute_lconv_coef`` for a
    32x32 input, and lipgraph must bound the result above its exact norm (> 1), not at 1.
    """
    from deel.torchlip.utils.lconv_norm import compute_lconv_coef

    from tests.helpers.onnx_oracle import one_node

    coef = float(compute_lconv_coef((3, 3), (1, 1, 32, 32), (1, 1)))
    w = np.full((1, 1, 3, 3), 1.0 / 3.0) * coef  # ||reshape(1, 9)||_2 = 1 before scaling
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
    exact_norm = conv_exact_norm(conv, (1, 32, 32))
    assert exact_norm > 1.01  # the finding: not 1-Lipschitz (about 1.015)
    model = one_node("Conv", [1, 1, 32, 32], {"W": w.astype(np.float32)}, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b = analyze(model).bound
    print(f"\ndeel coefficient {coef:.5f}: exact conv norm {exact_norm:.6f}, lipgraph {b:.6f}")
    assert b >= exact_norm * (1 - 1e-6)
    assert b <= 1.10 * exact_norm
