"""Per-pair network bounds for Conv + ReLU chains (lipgraph.norms.conv_apply, lipgraph.chain).

Oracles: torch's own convolution (every attribute combination the expansion accepts), the real model's
Jacobian from autograd (the chain's dense matrices with the activation pattern at x must reproduce it),
gradient norms (a pair bound may never be below one) and L2 PGD inside every certified radius. Models are
real torch exports (both exporters) run by ONNX Runtime.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from lipgraph.certify import certify
from lipgraph.chain import NotAChain, extract_chain, unfused_graph
from lipgraph.norms.conv_apply import ConvNotSupported, conv2d_linear

torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.mark.parametrize(
    "cin, cout, k, stride, pad, dil, group",
    [(1, 4, 3, 1, 1, 1, 1), (2, 6, 4, 2, 1, 1, 1), (4, 6, 3, 1, (0, 2), 2, 2), (3, 3, 2, (2, 1), 0, 1, 3)],
)
def test_conv_expansion_matches_torch(cin, cout, k, stride, pad, dil, group) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, cin, 7, 6))
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=group, bias=False).double()
    w = conv.weight.detach().numpy()
    s = (stride, stride) if isinstance(stride, int) else stride
    p = (pad, pad) if isinstance(pad, int) else pad
    attrs = {"strides": s, "dilations": (dil, dil), "group": group, "pads": (p[0], p[1], p[0], p[1])}
    got, inner = conv2d_linear(x, w, attrs)
    want = conv(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert inner == (cin // group) * k * k
    with pytest.raises(ConvNotSupported):  # (SAME_* is resolved: tests/norms/test_crown_conv_attacks.py)
        conv2d_linear(x, w, {**attrs, "auto_pad": "SAME_MIDDLE"})
    with pytest.raises(ConvNotSupported):
        conv2d_linear(np.concatenate([x, x[:, :1]], axis=1), w, attrs)  # channels do not fit the weight


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory, digits_mlp):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    x = digits_mlp.x.reshape(-1, 1, 8, 8)
    y = digits_mlp.y
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("cnn")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, dyn in (("legacy", False), ("dynamo", True)):
            paths[name] = folder / f"{name}.onnx"
            torch.onnx.export(
                model, (xt[:1],), str(paths[name]), input_names=["x"], output_names=["logits"], dynamo=dyn
            )
    return model, paths, x[:300], y[:300]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_cnn_chain_reproduces_the_models_jacobian(digits_cnn, exporter: str) -> None:
    model, paths, x, _ = digits_cnn
    g = unfused_graph(onnx.load(str(paths[exporter])), None, (1, 1, 8, 8))
    chain = extract_chain(g, g.output_name)
    assert chain.weights.sizes == [128, 64, 32]
    for idx in (0, 7, 42):
        xi = torch.from_numpy(x[idx : idx + 1]).double()
        jac = torch.autograd.functional.jacobian(lambda v: model.double()(v.view(1, 1, 8, 8)), xi.view(-1))
        jac = jac.reshape(10, 64).numpy()
        # the same Jacobian from the chain's matrices and the activation pattern at x
        h = xi.view(1, 1, 8, 8)
        dense = np.eye(64)
        layers = [m for m in model if not isinstance(m, nn.ReLU | nn.Flatten)]
        for w_k, layer in zip(chain.weights.hidden, layers[:-1], strict=True):
            h = torch.relu(layer(h.reshape(1, -1) if isinstance(layer, nn.Linear) else h))
            dense = (h.reshape(-1) > 0).numpy()[:, None] * (w_k @ dense)
        np.testing.assert_allclose(chain.weights.last @ dense, jac, rtol=1e-9, atol=1e-9)
    model.float()


def test_cnn_pair_bounds_are_sound_and_tighter(digits_cnn) -> None:
    model, paths, x, y = digits_cnn
    off = certify(paths["dynamo"], x, y, eps=[0.1], tight_pairs="off")
    auto = certify(paths["dynamo"], x, y, eps=[0.1], tight_pairs="auto")
    pb = auto.meta["pair_bounds"]
    assert pb["used"] and pb["chain"]["hidden"] == [128, 64, 32]
    assert "lipsdp-neuron" in pb["pairs_by_method"]
    assert np.all(auto.radii >= off.radii) and np.mean(auto.radii > 1.05 * off.radii) > 0.2
    # no pair bound below the norm of the real gradient of F_i - F_j anywhere we look
    xt = torch.from_numpy(x[:100]).requires_grad_(True)
    out = model(xt)
    for p in pb["pairs"]:
        i, j = p["classes"]
        (g,) = torch.autograd.grad((out[:, i] - out[:, j]).sum(), xt, retain_graph=True)
        assert float(g.reshape(100, -1).norm(dim=1).max()) <= p["bound"] * (1 + 1e-6)
    from tests.certify.test_attack import l2_pgd

    idx = np.flatnonzero(auto.radii > 0)[:120]
    r = torch.from_numpy(auto.radii[idx].astype(np.float32))
    flat = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), model)  # the attack works on flat samples
    xs = torch.from_numpy(x[idx].reshape(len(idx), -1))
    flipped = l2_pgd(flat, xs, torch.from_numpy(y[idx]), 0.999 * r, steps=50, restarts=2)
    assert not flipped.any()
    outside = l2_pgd(flat, xs, torch.from_numpy(y[idx]), 3.0 * r, steps=50, restarts=2)
    assert outside.any(), "the attack is too weak to test anything"


def test_a_large_conv_chain_is_refused_before_expansion(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    ).eval()
    path = tmp_path / "mnist_cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False)
    g = unfused_graph(onnx.load(str(path)), None, (1, 1, 28, 28))
    with pytest.raises(NotAChain, match="hidden units"):
        extract_chain(g, g.output_name)
