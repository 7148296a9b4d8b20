"""Local bounds of a trained conv net in the certificate, through the structured (convolution) form.

A small CNN trained on scikit-learn digits (8x8), exported by torch, certified by real ONNX Runtime sessions:
with the structured form forced, the local radii equal the dense form's, are grid values above the Lipschitz
radii, and survive an L2 PGD attack; the report says which form ran.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lipgraph import local_chain
from lipgraph.certify import certify

torch = pytest.importorskip("torch")
EPS = [0.1, 0.2, 0.3, 0.5]


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory):
    from sklearn.datasets import load_digits

    nn = torch.nn
    torch.set_num_threads(1)
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:-300]), torch.from_numpy(y[:-300])
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (xt[:1],), str(path), input_names=["x"], dynamic_axes={"x": {0: "N"}}, dynamo=False)
    return model, path, x[-300:], y[-300:]


def _run(digits_cnn, cost: float, monkeypatch: pytest.MonkeyPatch, mode: str = "auto"):
    _, path, x, y = digits_cnn
    monkeypatch.setattr(local_chain, "STRUCTURED_COST", cost)  # 0: structured always; inf: dense always
    return certify(path, x, y, eps=EPS, tight_pairs="off", local_bounds=mode)


def test_structured_local_radii_match_the_dense_ones_and_survive_pgd(digits_cnn, monkeypatch) -> None:
    from tests.certify.test_attack import l2_pgd

    model, _, x, y = digits_cnn
    off = _run(digits_cnn, 0.0, monkeypatch, "off")
    structured = _run(digits_cnn, 0.0, monkeypatch)
    dense = _run(digits_cnn, float("inf"), monkeypatch)
    assert structured.meta["local_bounds"]["form"] == "structured" and dense.meta["local_bounds"]["form"] == "dense"
    local = np.asarray(structured.sample_methods) == "crown-l2"
    assert local.mean() > 0.2, "the local bound should matter on this net"
    assert np.all(structured.radii[local] > off.radii[local])
    # the dense form's intermediate norms go through a Gram matrix (a rounding term under a root): it can only
    # lose a sample that sits within ~1e-7 of its eps; between grid points the radii tried follow the bound's slack
    # (lipgraph.local_bisect), which that rounding moves too, so there they agree closely rather than exactly
    close = np.isclose(structured.radii, dense.radii, rtol=1e-6, atol=0)
    assert np.mean(close) > 0.98, np.max(np.abs(structured.radii - dense.radii) / np.maximum(dense.radii, 1e-300))
    for e in EPS:
        assert structured.certified_at(e) >= dense.certified_at(e) >= off.certified_at(e)
    idx = np.flatnonzero(local)[:120]
    xt, tt = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    r = torch.from_numpy(structured.radii[idx].astype(np.float32))

    def flat_model(z: torch.Tensor) -> torch.Tensor:
        return model(z.view(-1, 1, 8, 8))

    inside = l2_pgd(flat_model, xt.view(len(idx), -1), tt, 0.999 * r, steps=60, restarts=3)
    assert not inside.any(), f"PGD flipped {int(inside.sum())} samples inside their certified radius"
    outside = l2_pgd(flat_model, xt.view(len(idx), -1), tt, 4.0 * r, steps=60, restarts=2)
    assert outside.any(), "the attack is too weak to test anything"


def test_batched_work_stays_per_sample(digits_cnn, monkeypatch) -> None:
    """Nothing depends on which other samples are checked: a subset certifies to the same radii."""
    _, path, x, y = digits_cnn
    monkeypatch.setattr(local_chain, "STRUCTURED_COST", 0.0)
    whole = certify(path, x, y, eps=EPS, tight_pairs="off")
    part = certify(path, x[7:90], y[7:90], eps=EPS, tight_pairs="off")
    np.testing.assert_array_equal(whole.radii[7:90], part.radii)
