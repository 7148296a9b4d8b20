"""Soundness by attack (issue 3): L2 PGD inside 0.999x every certified radius never flips a prediction,
while the same attack at a few times the radius does flip some (so the test can fail)."""

from __future__ import annotations

import numpy as np
import pytest

from lipgraph.certify import certify

torch = pytest.importorskip("torch")


def l2_pgd(model, x: torch.Tensor, target: torch.Tensor, radius: torch.Tensor, steps: int = 100,
           restarts: int = 4, seed: int = 0) -> torch.Tensor:
    """Per-sample L2 PGD on the margin loss; returns a bool tensor: prediction flipped by some restart."""
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.zeros(len(x), dtype=torch.bool)
    r = radius.view(-1, 1)
    step = 2.5 * r / steps
    for _ in range(restarts):
        delta = torch.randn(x.shape, generator=gen)
        delta = delta / delta.norm(dim=1, keepdim=True) * r * torch.rand(len(x), 1, generator=gen)
        for _ in range(steps):
            delta.requires_grad_(True)
            z = model(x + delta)
            zt = z.gather(1, target.view(-1, 1)).squeeze(1)
            other = z.clone()
            other[torch.arange(len(x)), target] = -torch.inf
            margin = zt - other.max(dim=1).values
            (g,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                flipped |= margin.detach() < 0
                g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = delta - step * g
                n = delta.norm(dim=1, keepdim=True)
                delta = delta * torch.clamp(r / n.clamp_min(1e-12), max=1.0)
        with torch.no_grad():
            flipped |= model(x + delta).argmax(1) != target
    return flipped


@pytest.fixture(scope="module")
def cert(digits_mlp):
    return certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.05, 0.1, 0.2, 0.3], per_sample=True)


def test_attack_inside_radius_never_flips_but_outside_does(digits_mlp, cert) -> None:
    radii = cert.radii
    ok = radii > 0
    assert ok.sum() >= 50, "the model should certify a fair number of samples"
    idx = np.flatnonzero(ok)[:200]
    x = torch.from_numpy(digits_mlp.x[idx])
    t = torch.from_numpy(digits_mlp.y[idx])
    r = torch.from_numpy(radii[idx].astype(np.float32))
    model = digits_mlp.model
    inside = l2_pgd(model, x, t, 0.999 * r)
    assert not inside.any(), f"PGD flipped {int(inside.sum())} samples inside their certified radius"
    outside = l2_pgd(model, x, t, 2.0 * r)
    assert outside.any(), "the attack never succeeds even at 2x the radius: it is too weak to test anything"


def test_pairwise_never_below_global_and_accuracy_matches_radii(digits_mlp) -> None:
    from lipgraph.analyze import analyze
    from lipgraph.certify import compute_radii
    from lipgraph.inference import Runner, logits_model, model_input, resolve_providers
    from lipgraph.tail import find_tail

    a = analyze(digits_mlp.onnx_path)
    inp = model_input(a.graph.model, a.input_name)
    runner = Runner(logits_model(a.graph.model, inp.name, a.logits_name, None), inp, a.logits_name,
                    resolve_providers("cpu"))
    logits = runner.run(digits_mlp.x)
    tails = find_tail(a.graph, a.logits_name, a.tensor_bounds)
    assert tails, "the final Gemm is an affine tail"
    rad = compute_radii(logits, digits_mlp.y, a.bound, tails)
    assert rad.method == "pairwise"
    assert rad.pairwise_radius is not None
    assert np.all(rad.pairwise_radius >= rad.global_radius)
    assert np.any(rad.pairwise_radius > rad.global_radius * 1.01), "pairwise should be strictly better somewhere"
    np.testing.assert_array_equal(rad.radius, np.maximum(rad.pairwise_radius, rad.global_radius))
    # global radius recomputed independently from the logits
    f = logits
    t = digits_mlp.y
    other = f.copy()
    other[np.arange(len(f)), t] = -np.inf
    m = f[np.arange(len(f)), t] - other.max(1)
    expect = np.where(f.argmax(1) == t, np.maximum(m - 1e-5 * np.abs(f).max(1), 0) / (np.sqrt(2) * a.bound), 0)
    assert np.all(rad.global_radius <= expect)
    np.testing.assert_allclose(rad.global_radius, expect, rtol=1e-9, atol=0)


def test_report_accuracy_equals_per_sample_radii(digits_mlp, cert) -> None:
    d = cert.to_json()
    per = d["per_sample"]
    assert len(per) == d["samples"] == len(digits_mlp.y)
    preds = np.array([p["prediction"] for p in per])
    labels = np.array([p["label"] for p in per])
    radii = np.array([p["radius"] for p in per])
    np.testing.assert_array_equal(labels, digits_mlp.y)
    assert d["clean_accuracy"] == pytest.approx(np.mean(preds == labels))
    assert np.all(radii[preds != labels] == 0)
    for k, v in d["certified_accuracy"].items():
        assert v == pytest.approx(np.mean((preds == labels) & (radii >= float(k))))
    assert d["median_radius"] == pytest.approx(np.median(radii))
    # the torch model agrees with ONNX Runtime's predictions
    with torch.no_grad():
        tp = digits_mlp.model(torch.from_numpy(digits_mlp.x)).argmax(1).numpy()
    assert np.mean(tp == preds) > 0.99
