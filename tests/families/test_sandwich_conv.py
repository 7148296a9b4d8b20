"""Sandwich conv layers (circular ``M sigma(N x + b)``): the CircularSandwich certificate against oracles.

Oracles, independent of lipgraph's norms: N and M as dense float64 matrices (torch's circular pad and
conv2d applied to the standard basis, the ops the exporters see). With secant slopes, the layer's
difference quotients are Jacobians ``M D N`` with D diagonal between the activation's extreme slopes,
and ``||M D N||`` is convex in D, so the true constant is the max over the box's vertices: enumerated
when the hidden layer is tiny, otherwise a coordinate-ascent lower estimate over vertices. A sound bound
is >= that. Near-misses (M not matching, slopes outside [0, 1], zero padding, a negative Psi on one side)
are built so that their true constant is clearly above 1: returning the family's value would fail.
"""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from lipgraph import analyze  # noqa: E402
from lipgraph.norms.conv_fft import _half_frequencies  # noqa: E402
from lipgraph.norms.sandwich_conv import _upper_gap, circular_symbols, dense_groups  # noqa: E402
from tests.families import export_onnx  # noqa: E402
from tests.families.sandwich import sandwich_layer  # noqa: E402

pytestmark = pytest.mark.torch

SLOPES = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "leaky0.3": (0.3, 1.0), "leaky-0.5": (-0.5, 1.0)}


def act_fn(name: str):
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    alpha = float(name[len("leaky") :])
    return lambda t: F.leaky_relu(t, alpha)


def op_matrix(kernel: torch.Tensor, pads, dilation: int, groups: int, in_shape, mode: str = "circular") -> np.ndarray:
    """The dense (out x in) matrix of ``conv2d(pad(x))`` on one sample of shape ``in_shape`` (C, H, W)."""
    nin = int(np.prod(in_shape))
    basis = torch.eye(nin, dtype=torch.float64).reshape(nin, *in_shape)
    padded = F.pad(basis, pads, mode=mode) if mode == "circular" else F.pad(basis, pads)
    out = F.conv2d(padded, kernel.double(), dilation=dilation, groups=groups)
    return out.reshape(nin, -1).T.numpy()


def vertex_max(n_mat: np.ndarray, m_mat: np.ndarray, slopes: tuple[float, float], seed: int = 0) -> float:
    """max over D in {lo, hi}^H of ||M D N||: exact for H <= 10, else a coordinate ascent (a lower estimate)."""
    hid = n_mat.shape[0]

    def norm(d: np.ndarray) -> float:
        return float(np.linalg.svd(m_mat @ (d[:, None] * n_mat), compute_uv=False)[0])

    if hid <= 10:
        return max(norm(np.asarray(d)) for d in itertools.product(slopes, repeat=hid))
    rng = np.random.default_rng(seed)
    best = 0.0
    for start in range(4):
        d = np.full(hid, slopes[1]) if start == 0 else rng.choice(slopes, size=hid)
        cur = norm(d)
        improved = True
        while improved:
            improved = False
            for i in range(hid):
                d[i] = slopes[0] if d[i] == slopes[1] else slopes[1]
                v = norm(d)
                if v > cur * (1 + 1e-12):
                    cur, improved = v, True
                else:
                    d[i] = slopes[0] if d[i] == slopes[1] else slopes[1]
        best = max(best, cur)
    return best


def export_legacy(module: nn.Module, shape) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), buf, dynamo=False, input_names=["x"], opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def analysed(module: nn.Module, shape, dynamo: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx(module, shape, True) if dynamo else export_legacy(module, shape)
        a = analyze(proto)
    node = next((n for n in a.nodes if n.op_type == "CircularSandwich"), None)
    return a, node


# ----------------------------------------------------------------------------- the family and near-misses


def family_mats(layer, n: int, mode: str = "circular") -> tuple[np.ndarray, np.ndarray]:
    """N = sqrt2 Psi^-1 B and M = sqrt2 A^* Psi_out of a SandwichConv layer, as dense matrices."""
    wb, wa = layer.conv_b.weight.detach(), layer.conv_a.weight.detach()
    k = wb.shape[-1]
    pads = (k // 2,) * 4
    n_mat = op_matrix(wb, pads, 1, 1, (wb.shape[1], n, n), mode)
    m_mat = op_matrix(wa, pads, 1, 1, (wa.shape[1], n, n), mode)
    psi = layer.psi.detach().double().reshape(-1).numpy().repeat(n * n)
    psi_out = layer.psi_out.detach().double().reshape(-1).numpy().repeat(n * n)
    return 2**0.5 * n_mat / psi[:, None], 2**0.5 * m_mat * psi_out[None, :]


N_GRID = 3
C_IN, C_OUT, HIDDEN = 2, 2, 3


def layer(seed: int = 5, **kw):
    return sandwich_layer(C_IN, C_OUT, HIDDEN, N_GRID, seed, **kw).eval()


NEAR_MISSES = {
    # M is not the family's: a second, unrelated kernel (G > 0 at every Lambda)
    "m-mismatch": lambda: layer(a_scale=1.0, psi_out=np.exp(np.linspace(-1.0, 1.0, HIDDEN)) * 2.0),
    "negative-slope": lambda: layer(act=act_fn("leaky-0.5"), a_scale=1.6),
    "zero-padding": lambda: layer(padding_mode="zeros", a_scale=1.6),
    # Psi on M's side with a negative entry, N's side positive: D's sign flips on that channel
    "psi-negative-one-side": lambda: layer(psi=np.ones(HIDDEN), psi_out=np.array([1.0, -1.0, 1.0]), seed=7),
}


def test_family_layer_is_certified_one_and_sound():
    mod = layer()
    a, node = analysed(mod, (1, C_IN, N_GRID, N_GRID))
    assert node is not None, [n.op_type for n in a.nodes]
    n_mat, m_mat = family_mats(mod, N_GRID)
    truth = vertex_max(n_mat, m_mat, SLOPES["relu"])
    assert node.bound >= truth * (1 - 1e-9)
    assert node.bound <= 1 + 1e-5  # the family's certificate is 1


@pytest.mark.parametrize("variant", ["negative-psi-both-sides", "bias-not-per-channel", "tanh"])
def test_family_variants_that_stay_one_lipschitz(variant):
    """A negative Psi on both sides cancels (M D N = 2 A^* D B); any constant shift and any activation with
    slopes in [0, 1] keep the certificate: the bound stays 1 and sound."""
    kw = {
        "negative-psi-both-sides": {"psi": np.array([0.7, -1.3, 2.0])},
        "bias-not-per-channel": {"bias": np.linspace(-0.3, 0.3, HIDDEN * N_GRID * N_GRID).reshape(HIDDEN, 3, 3)},
        "tanh": {"act": torch.tanh},
    }[variant]
    mod = layer(**kw)
    a, node = analysed(mod, (1, C_IN, N_GRID, N_GRID))
    assert node is not None
    n_mat, m_mat = family_mats(mod, N_GRID)
    assert node.bound >= vertex_max(n_mat, m_mat, (0.0, 1.0)) * (1 - 1e-9)
    assert node.bound <= 1 + 1e-5


@pytest.mark.parametrize("variant", sorted(NEAR_MISSES))
def test_near_misses_fall_back_soundly(variant):
    mod = NEAR_MISSES[variant]()
    a, node = analysed(mod, (1, C_IN, N_GRID, N_GRID))
    mode = "zeros" if variant == "zero-padding" else "circular"
    n_mat, m_mat = family_mats(mod, N_GRID, mode)
    slopes = SLOPES["leaky-0.5"] if variant == "negative-slope" else SLOPES["relu"]
    truth = vertex_max(n_mat, m_mat, slopes)
    assert truth > 1.05, "the near-miss must be able to expand, else the test proves nothing"
    assert a.bound >= truth * (1 - 1e-9), (a.bound, truth)
    if variant in ("negative-slope", "zero-padding"):
        assert node is None  # not the pattern: generic rules only


@pytest.mark.parametrize("noise", [1e-4, 1e-2, 1e-1])
def test_perturbed_m_degrades_gracefully(noise):
    """M = the family's kernel plus noise: G(w) > 0 by about the noise, so the bound is a little above 1,
    sound at every size (the dense-matrix vertex oracle)."""
    mod = layer()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = mod.conv_a.weight
        w.add_(noise * float(w.abs().max()) * torch.randn(w.shape, generator=gen))
    a, node = analysed(mod, (1, C_IN, N_GRID, N_GRID))
    assert node is not None
    n_mat, m_mat = family_mats(mod, N_GRID)
    truth = vertex_max(n_mat, m_mat, SLOPES["relu"])
    assert node.bound >= truth * (1 - 1e-9)
    assert node.bound <= 1 + 50 * noise  # graceful: not the per-op product


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["family", "m-mismatch", "zero-padding"])
def test_dynamo_export(variant):
    mod = layer() if variant == "family" else NEAR_MISSES[variant]()
    a, node = analysed(mod, (1, C_IN, N_GRID, N_GRID), dynamo=True)
    n_mat, m_mat = family_mats(mod, N_GRID, "zeros" if variant == "zero-padding" else "circular")
    truth = vertex_max(n_mat, m_mat, SLOPES["relu"])
    assert a.bound >= truth * (1 - 1e-9)
    assert (node is None) == (variant == "zero-padding")
    if variant == "family":
        assert node.bound <= 1 + 1e-5


# ----------------------------------------------------------------------------- random circular sandwiches


class CircSandwich(nn.Module):
    """``M(c_pre * act(c_mid * N(x) + bias))``, N and M circular convs with their own pads, dilation, groups."""

    def __init__(self, nk, mk, n_geo, m_geo, c_mid, c_pre, act):
        super().__init__()
        self.nk, self.mk = nn.Parameter(nk), nn.Parameter(mk)
        self.n_geo, self.m_geo = n_geo, m_geo  # (pads, dilation, groups)
        self.c_mid = nn.Parameter(c_mid.reshape(1, -1, 1, 1))
        self.c_pre = nn.Parameter(c_pre.reshape(1, -1, 1, 1))
        self.bias = nn.Parameter(0.1 * torch.ones(1, nk.shape[0], 1, 1))
        self.act = act_fn(act)

    def forward(self, x):
        pads, dil, groups = self.n_geo
        u = F.conv2d(F.pad(x, pads, mode="circular"), self.nk, dilation=dil, groups=groups)
        h = self.act(u * self.c_mid + self.bias) * self.c_pre
        pads, dil, groups = self.m_geo
        return F.conv2d(F.pad(h, pads, mode="circular"), self.mk, dilation=dil, groups=groups)


def _geometry(k: int, dil: int, shift: int) -> tuple[int, int, int, int]:
    """Circular pads adding up to the dilated reach minus one, split with a shift (left, right, top, bottom)."""
    reach = (k - 1) * dil
    left = min(reach, max(0, reach // 2 + shift))
    return (left, reach - left, reach - left, left)


@settings(deadline=None, derandomize=True, database=None, max_examples=12, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 10_000),
    act=st.sampled_from(sorted(SLOPES)),
    kn=st.sampled_from([2, 3]),  # a 1 x 1 kernel has no wrap padding: a plain Conv, not fused
    km=st.sampled_from([2, 3]),
    dil=st.sampled_from([1, 2]),
    grouped=st.booleans(),
    shift=st.integers(-1, 1),
)
def test_random_circular_sandwiches_are_sound(seed, act, kn, km, dil, grouped, shift):
    gen = torch.Generator().manual_seed(seed)
    c, h, grid = 2, 2, 3
    gn = 2 if grouped else 1
    nk = torch.randn(h, c // gn, kn, kn, generator=gen) / kn
    mk = torch.randn(c, h, km, km, generator=gen) / km
    c_mid = torch.rand(h, generator=gen) + 0.5
    c_pre = torch.randn(h, generator=gen)
    n_geo, m_geo = (_geometry(kn, dil, shift), dil, gn), (_geometry(km, 1, -shift), 1, 1)
    mod = CircSandwich(nk, mk, n_geo, m_geo, c_mid, c_pre, act).eval()
    a, node = analysed(mod, (1, c, grid, grid))
    n_mat = op_matrix(nk, n_geo[0], dil, gn, (c, grid, grid)) * c_mid.double().numpy().repeat(grid * grid)[:, None]
    m_mat = op_matrix(mk, m_geo[0], 1, 1, (h, grid, grid)) * c_pre.double().numpy().repeat(grid * grid)[None, :]
    lo, hi = SLOPES[act]
    truth = vertex_max(n_mat, m_mat, (lo, hi), seed=seed)
    assert a.bound >= truth * (1 - 1e-9), (a.bound, truth, [n.method for n in a.nodes])
    assert (node is not None) == (lo >= 0), [n.op_type for n in a.nodes]
    if node is not None:
        product = np.linalg.norm(m_mat, 2) * np.linalg.norm(n_mat, 2)
        assert node.bound <= product * (1 + 1e-6)  # never above the per-op product


@settings(deadline=None, derandomize=True, database=None, max_examples=25)
@given(
    seed=st.integers(0, 10_000),
    kn=st.sampled_from([1, 2, 3]),
    km=st.sampled_from([1, 3]),
    dil=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    grid=st.sampled_from([(3, 3), (2, 4), (4, 3)]),
)
def test_per_frequency_gap_equals_the_dense_one(seed, kn, km, dil, groups, grid):
    """``max_w lambda_max(G(w))`` (channel symbols) equals lambda_max of the dense G on the grid: the
    block-circulant reduction, its channel conventions and the wrap shift's phase, checked on exact matrices."""
    rng = np.random.default_rng(seed)
    c_in, h, c_out = 2, 4, 3
    g_n = groups  # divides c_in and h
    nk = rng.standard_normal((h, c_in // g_n, kn, kn))
    mk = rng.standard_normal((c_out, h, km, km))
    lam = np.exp(rng.standard_normal(h))
    n_full = dense_groups(nk, g_n)
    freqs = _half_frequencies(grid)
    n_sym, _ = circular_symbols(n_full, [dil, dil], grid, freqs)
    m_sym, _ = circular_symbols(mk, [1, 1], grid, freqs)
    per_freq = _upper_gap(n_sym, m_sym, lam, 0.0, 0.0)
    reach = (kn - 1) * dil
    n_pads = (reach // 2, reach - reach // 2, reach - reach // 2, reach // 2)  # any split: a shift
    m_pads = ((km - 1) // 2,) * 4
    n_mat = op_matrix(torch.from_numpy(nk), n_pads, dil, g_n, (c_in, *grid))
    m_mat = op_matrix(torch.from_numpy(mk), m_pads, 1, 1, (h, *grid))
    lam_big = np.repeat(lam, grid[0] * grid[1])
    g = (lam_big[:, None] * n_mat) @ (lam_big[:, None] * n_mat).T + m_mat.T @ m_mat - 2 * np.diag(lam_big)
    dense = float(np.linalg.eigvalsh(g)[-1])
    scale = 1.0 + float(np.abs(g).sum(axis=1).max())
    assert per_freq >= dense - 1e-12 * scale  # the allowances make it an upper bound
    assert per_freq <= dense + 1e-9 * scale  # and the reduction is exact: no slack beyond rounding


# ----------------------------------------------------------------------------- never looser than without the pass


def _without_pass(proto, monkeypatch) -> float:
    from lipgraph import passes

    with monkeypatch.context() as mp:
        mp.setattr(passes, "PASS_ORDER", [p for p in passes.PASS_ORDER if p.module != "conv_sandwiches"])
        return analyze(proto).bound


@pytest.mark.parametrize("shape", ["c-r-c-head", "c-r-c-c-head", "c-r-c-r-c-head", "family-psi-spread"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_pass_never_loosens_a_network(shape, seed, monkeypatch):
    """A block whose N or M the linear-map composition could merge with a neighbour is fused only when it is
    a Sandwich layer: random circular conv nets keep the composed bound, family layers (with a wide spread
    of Psi) get the certificate."""
    torch.manual_seed(seed)

    def conv(a: int, b: int) -> nn.Conv2d:
        return nn.Conv2d(a, b, 3, padding=1, padding_mode="circular")

    head = [nn.Flatten(), nn.Linear(4 * 25, 10)]
    nets = {
        "c-r-c-head": [conv(3, 4), nn.ReLU(), conv(4, 4), *head],
        "c-r-c-c-head": [conv(3, 4), nn.ReLU(), conv(4, 4), conv(4, 4), *head],
        "c-r-c-r-c-head": [conv(3, 4), nn.ReLU(), conv(4, 4), nn.ReLU(), conv(4, 4), *head],
        "family-psi-spread": [
            conv(3, 3),
            sandwich_layer(3, 4, 5, 5, seed, psi=np.exp(np.linspace(-3.0, 3.0, 5))),
            *head,
        ],
    }
    proto = export_legacy(nn.Sequential(*nets[shape]).eval(), (1, 3, 5, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = analyze(proto)
        without = _without_pass(proto, monkeypatch)
    assert a.bound <= without * (1 + 1e-9), (a.bound, without, [(n.op_type, n.method) for n in a.nodes])
    fused = any(n.op_type == "CircularSandwich" for n in a.nodes)
    assert fused == (shape in ("c-r-c-r-c-head", "family-psi-spread")), [n.op_type for n in a.nodes]


# ----------------------------------------------------------------------------- float error through the block


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_float_error_walk_through_the_block_covers_onnx_runtime(dynamo):
    """lipgraph certify's float error model, walking through the fused blocks, covers ONNX Runtime's float32
    logits against a float64 evaluation of the same graph (large and offset inputs). A coverage check of the
    certify path: the bound's slack here is wide (a factor of 1e-3 for the blocks would still pass)."""
    from lipgraph.floaterr import float_error_model
    from tests.certify.float_nets import run_float64
    from tests.certify.test_float_error_regions import _inputs, _ort
    from tests.families.sandwich import conv_net

    shape = (1, 2, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proto = export_onnx(conv_net(), shape, dynamo)
        an = analyze(proto, input_shape=shape)
    assert sum(n.op_type == "CircularSandwich" for n in an.graph.nodes) == 2
    x = _inputs(shape)
    exact = np.concatenate([run_float64(proto, x[i : i + 1]) for i in range(len(x))])  # dynamo fixes batch 1
    err = np.linalg.norm(_ort(proto, x) - exact.reshape(len(x), -1), axis=1)
    norms = np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)
    model = float_error_model(proto, None, shape, analysis=an)
    assert np.all(err <= model.at(norms)), (err.max(), model.at(norms).max())
