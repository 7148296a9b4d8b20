"""Sandwich blocks: residual (CPL, SLL) and plain (LBDN), against exact activation-pattern oracles.

Oracle: with secant slopes, a block's difference quotient is its Jacobian at some diagonal D with
entries between the activation's extreme slopes; the norm of that Jacobian is convex in D, so the
max over the box's vertices (every pattern, enumerated) is at least the true Lipschitz constant,
and equals it for ReLU when Q has full row rank (every pattern is realised). Operator matrices
come from torch (conv2d / conv_transpose2d on the basis), independent of lipgraph's norms.
"""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from lipgraph import analyze

SETTINGS = dict(
    deadline=None, derandomize=True, database=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow]
)
ACTS = {
    "relu": (0.0, 1.0),
    "leaky0.3": (0.3, 1.0),
    "tanh": (0.0, 1.0),
    "leaky-0.5": (-0.5, 1.0),
    "leaky1.5": (1.0, 1.5),
}


def act_fn(name: str):
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    alpha = float(name[len("leaky") :])
    return lambda t: F.leaky_relu(t, alpha)


class Residual(nn.Module):
    """``x - c * P(pre * act(Q x + b))``; dense (P, Q matrices) or conv (Conv then ConvTranspose)."""

    def __init__(self, kind, q, p, pre, c, act):
        super().__init__()
        self.kind, self.act, self.c = kind, act_fn(act), float(c)
        self.q, self.p = nn.Parameter(q), nn.Parameter(p)
        self.b = nn.Parameter(0.1 * torch.randn(q.shape[0]))
        self.pre = nn.Parameter(pre)

    def forward(self, x):
        if self.kind == "dense":
            h = self.act(F.linear(x, self.q, self.b)) * self.pre
            return x - self.c * F.linear(h, self.p.t())
        h = self.act(F.conv2d(x, self.q, self.b, padding=1)) * self.pre[None, :, None, None]
        return x - self.c * F.conv_transpose2d(h, self.p, padding=1)


def operators(kind, q, p, shape):
    """Dense matrices of Q (h x n) and P (n x h) acting on one flattened sample."""
    q, p = q.double(), p.double()
    if kind == "dense":
        return q.numpy(), p.numpy().T
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    qm = F.conv2d(basis, q, padding=1).reshape(n, -1).T
    hidden = qm.shape[0]
    hb = torch.eye(hidden, dtype=torch.float64).reshape(hidden, q.shape[0], *shape[1:])
    pm = F.conv_transpose2d(hb, p, padding=1).reshape(hidden, -1).T
    return qm.numpy(), pm.numpy()


def vertex_max(mats, slopes, residual=True):
    """max over D in {lo, hi}^h of ||I - P D Q|| (residual) or ||P D Q||."""
    qm, pm = mats
    best = 0.0
    for d in itertools.product(slopes, repeat=qm.shape[0]):
        j = pm @ (np.asarray(d)[:, None] * qm)
        j = np.eye(j.shape[0]) - j if residual else j
        best = max(best, float(np.linalg.svd(j, compute_uv=False)[0]))
    return best


def export_legacy(module, shape):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), buf, dynamo=False, input_names=["x"], opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def residual_case(kind, variant, act, seed, noise=1e-3):
    gen = torch.Generator().manual_seed(seed)
    if kind == "dense":
        n, h = 6, 4
        q = torch.randn(h, n, generator=gen) / n**0.5
        shape = (1, n)
        mats_shape = None
    else:
        c, h, size = 2, 1 + seed % 2, 2
        q = torch.randn(h, c, 3, 3, generator=gen) / 3
        shape = (1, c, size, size)
        mats_shape = (c, size, size)
    qm, _ = operators(kind, q, q, mats_shape)
    norm2 = float(np.linalg.svd(qm, compute_uv=False)[0]) ** 2
    pre = torch.ones(h)
    p = q.clone()
    c = 2.0 / norm2  # CPL
    if variant == "sll":
        pre = torch.rand(h, generator=gen) + 0.5
        c = 2.0 / norm2 / float(pre.max())
    elif variant == "perturbed":
        p = q + noise * torch.randn(q.shape, generator=gen)
    elif variant == "negative":
        pre = torch.ones(h)
        pre[0] = -1.0
    elif variant == "random":
        p = torch.randn(q.shape, generator=gen) / 3
    block = Residual(kind, q, p, pre, c, act)
    # Exact oracle: float64 products of the float32 constants the exported model holds.
    c32 = float(np.float32(c))
    pm_scaled = operators(
        kind, q.double(), p.double() * pre.double().reshape(-1, *([1] * (p.ndim - 1))) * c32, mats_shape
    )
    return block, shape, pm_scaled


@settings(**SETTINGS)
@given(
    kind=st.sampled_from(["dense", "conv"]),
    variant=st.sampled_from(["cpl", "sll", "perturbed", "negative", "random"]),
    act=st.sampled_from(sorted(ACTS)),
    seed=st.integers(0, 1000),
)
def test_residual_sound_against_all_patterns(kind, variant, act, seed):
    block, shape, mats = residual_case(kind, variant, act, seed)
    model = export_legacy(block, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = analyze(model, input_shape=shape)
    truth_up = vertex_max(mats, ACTS[act])
    assert a.bound >= truth_up * (1 - 1e-9), (a.bound, truth_up, [n.method for n in a.nodes])
    fusedd = any(n.op_type == "ResidualSandwich" for n in a.nodes)
    lo, hi = ACTS[act]
    if lo < 0 or hi > 1:
        assert not fusedd  # slopes outside [0, 1]: generic rules only
    elif variant in ("cpl", "sll") and act == "relu":
        assert fusedd
        assert a.bound <= 1.01 * truth_up, (a.bound, truth_up)


@pytest.mark.parametrize("noise", [1e-6, 1e-3, 1e-1])
def test_convtranspose_of_a_slightly_different_kernel(noise):
    """The perturbation term grows with ||P - Q^T S||: sound at every size, near 1 when tiny."""
    block, shape, mats = residual_case("conv", "perturbed", "relu", 7, noise=noise)
    a = analyze(export_legacy(block, shape), input_shape=shape)
    truth = vertex_max(mats, (0.0, 1.0))
    assert a.bound >= truth * (1 - 1e-9)
    if noise <= 1e-6:
        assert a.bound <= 1.001


def test_negative_scale_falls_back_to_product():
    block, shape, mats = residual_case("dense", "negative", "relu", 3)
    a = analyze(export_legacy(block, shape), input_shape=shape)
    assert a.bound >= vertex_max(mats, (0.0, 1.0)) * (1 - 1e-9)
    assert a.bound > 1.05  # an entry of S < 0: the block can expand, and the bound says so


# ----------------------------------------------------------------------------- plain (LBDN)


class Plain(nn.Module):
    def __init__(self, n_mat, m_mat, act):
        super().__init__()
        self.n, self.m, self.act = nn.Parameter(n_mat), nn.Parameter(m_mat), act_fn(act)
        self.b = nn.Parameter(0.1 * torch.randn(n_mat.shape[0]))

    def forward(self, x):
        return F.linear(self.act(F.linear(x, self.n, self.b)), self.m) + 0.0 * x.sum()  # not the logits


def lbdn_mats(seed, fin=5, fout=4, hidden=6, psi_scale=0.5):
    gen = torch.Generator().manual_seed(seed)
    qm, _ = torch.linalg.qr(torch.randn(fin + fout, hidden, generator=gen, dtype=torch.float64))
    a, b = qm.T[:, :fout], qm.T[:, fout:]
    psi = torch.exp(psi_scale * torch.randn(hidden, generator=gen, dtype=torch.float64))
    n_mat = 2**0.5 * b / psi[:, None]
    m_mat = 2**0.5 * (a * psi[:, None]).T
    return n_mat.float(), m_mat.float()


def plain_bound(n_mat, m_mat, act="relu"):
    fin = n_mat.shape[1]
    model = export_legacy(nn.Sequential(Plain(n_mat, m_mat, act), nn.Linear(m_mat.shape[0], 3)), (1, fin))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = analyze(model)
    node = next((n for n in a.nodes if n.op_type == "Sandwich"), None)
    return node, a


@settings(**SETTINGS)
@given(
    seed=st.integers(0, 1000),
    variant=st.sampled_from(["lbdn", "random", "scaled"]),
    act=st.sampled_from(["relu", "tanh", "leaky-0.5"]),
)
def test_plain_sandwich_sound_against_all_patterns(seed, variant, act):
    n_mat, m_mat = lbdn_mats(seed)
    if variant == "random":
        gen = torch.Generator().manual_seed(seed + 1)
        m_mat = torch.randn(m_mat.shape, generator=gen)
    elif variant == "scaled":
        m_mat = 1.1 * m_mat  # a 1.1-Lipschitz layer: the certificate must not say 1
    node, a = plain_bound(n_mat, m_mat, act)
    lo, hi = ACTS[act]
    truth_up = vertex_max((n_mat.double().numpy(), m_mat.double().numpy()), (lo, hi), residual=False)
    if lo < 0:
        assert node is None
        return
    assert node is not None
    assert node.bound >= truth_up * (1 - 1e-9), (node.bound, truth_up)
    generic = np.linalg.norm(m_mat.double().numpy(), 2) * np.linalg.norm(n_mat.double().numpy(), 2)
    assert node.bound <= generic * (1 + 1e-6)
    if variant == "lbdn":
        assert node.bound <= 1.0 + 1e-5  # the family's certificate is 1


def test_lbdn_inequality_numerically():
    """||M D N||^2 <= 1 + max(0, lambda_max(G)) ||N||^2 for random M, N, Lambda and D in [0, 1]."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, fin, fout = rng.integers(1, 7, size=3)
        m, n = rng.standard_normal((fout, h)), rng.standard_normal((h, fin))
        lam = np.exp(rng.standard_normal(h))
        g = (lam[:, None] * n) @ (lam[:, None] * n).T + m.T @ m - 2 * np.diag(lam)
        rhs = 1 + max(0.0, np.linalg.eigvalsh(g)[-1]) * np.linalg.norm(n, 2) ** 2
        d = rng.uniform(0, 1, size=h) * (rng.uniform(size=h) > 0.3)
        assert np.linalg.norm(m @ (d[:, None] * n), 2) ** 2 <= rhs * (1 + 1e-12)


def test_last_layer_feeding_the_logits_is_left_to_the_tail():
    """``MatMul -> Relu -> MatMul -> Add(bias)`` as the logits: not fused (the certify tail reads M)."""
    from onnx import helper

    from tests.helpers.onnx_oracle import make_model

    rng = np.random.default_rng(0)
    inits = {
        "w1": rng.standard_normal((6, 8)).astype(np.float32),
        "w2": rng.standard_normal((8, 5)).astype(np.float32),
        "b": np.ones(5, np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["y"]),
    ]
    a = analyze(make_model(nodes, [("x", [1, 6])], ["y"], inits))
    assert [n.op_type for n in a.nodes] == ["MatMul", "Relu", "MatMul", "Add"]
