"""LMT's guarded logits, the hinge and margin-CE losses against hand-computed values; lr schedules."""

import math

import pytest
import torch
import torch.nn.functional as F

from lipgraph.train.losses import (
    hinge_loss,
    lmt_global_logits,
    lmt_pairwise_logits,
    margin_ce_loss,
    pairwise_radius,
    pairwise_row_distances,
)


def test_pairwise_hand_computed():
    # Rows: w0 = (0,0), w1 = (3,4), w2 = (0,1): ||w0-w1|| = 5, ||w0-w2|| = 1, ||w1-w2|| = sqrt(18).
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    logits = torch.tensor([[2.0, 1.0, 1.9],   # target 0: gaps 1.0 (to 1), 0.1 (to 2)
                           [0.0, 1.0, 3.0],   # target 1: misclassified -> no guard
                           [0.0, 0.0, 10.0]])  # target 2: margins far above the guard -> full guard
    y = torch.tensor([0, 1, 2])
    c, l_h = 0.2, torch.tensor(1.0)
    out = lmt_pairwise_logits(logits, y, l_h, w, c)
    # ex 0: guards l_1 = 0.2*5 = 1, l_2 = 0.2*1 = 0.2; ratios 1/1 = 1, 0.1/0.2 = 0.5 -> factor 0.5
    exp0 = torch.tensor([2.0, 1.0 + 0.5 * 1.0, 1.9 + 0.5 * 0.2])
    # ex 1: F_t - F_2 < 0 -> factor 0, unchanged
    exp1 = logits[1]
    # ex 2: guards l_0 = 0.2*1 = 0.2, l_1 = 0.2*sqrt(18); gaps 10 -> factor 1
    exp2 = torch.tensor([0.2, 0.2 * math.sqrt(18.0), 10.0])
    torch.testing.assert_close(out, torch.stack([exp0, exp1, exp2]))


def test_pairwise_gradient_flows_through_bound_not_factor():
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    l_h = torch.tensor(2.0, requires_grad=True)
    logits = torch.tensor([[2.0, 1.0, 1.9]], requires_grad=True)
    y = torch.tensor([0])
    out = lmt_pairwise_logits(logits, y, l_h, w, 0.1)
    out.sum().backward()
    # factor: guards 0.1*2*5 = 1, 0.1*2*1 = 0.2 -> ratios 1, 0.5 -> 0.5, constant for the gradient
    assert torch.allclose(logits.grad, torch.ones(1, 3))
    # d/dl_h of sum_i factor * c * ||w_t - w_i|| = 0.5 * 0.1 * (5 + 1)
    assert l_h.grad.item() == pytest.approx(0.3)
    assert torch.isfinite(w.grad).all()


def test_global_hand_computed():
    logits = torch.tensor([[3.0, 1.0, 2.5], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    c, l_f = 0.5, torch.tensor(1.0)
    out = lmt_global_logits(logits, y, l_f, c)
    guard = math.sqrt(2) * 0.5
    factor = 0.5 / guard  # margin 0.5 to the runner-up, below the guard
    exp0 = torch.tensor([3.0, 1.0 + factor * guard, 2.5 + factor * guard])
    torch.testing.assert_close(out, torch.stack([exp0, logits[1]]))


def test_row_distances_and_radius():
    w = torch.randn(5, 7, dtype=torch.float64)
    d = pairwise_row_distances(w)
    exact = torch.cdist(w, w)
    torch.testing.assert_close(d, exact, atol=1e-9, rtol=1e-9)
    logits = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    r = pairwise_radius(logits, torch.tensor([0]), 2.0, w)
    assert r.item() == pytest.approx(min(1.0 / (2.0 * exact[0, i].item()) for i in range(1, 5)))
    assert pairwise_radius(logits, torch.tensor([1]), 2.0, w).item() == 0.0


def test_hinge_margin():
    logits = torch.tensor([[1.0, 0.0, 0.5]])
    y = torch.tensor([0])
    eps = 0.5
    m = math.sqrt(2) * eps
    expected = (max(0.0, m - 1.0 + 0.0) + max(0.0, m - 1.0 + 0.5)) / 3
    assert hinge_loss(logits, y, eps).item() == pytest.approx(expected)
    assert F.multi_margin_loss(logits, y).item() >= 0


def test_margin_ce_hand_computed():
    logits = torch.tensor([[1.0, 0.0, 0.5]])
    y = torch.tensor([0])
    eps, tau = 0.5, 3.0
    m = math.sqrt(2) * eps
    z = [tau * 1.0, tau * (0.0 + m), tau * (0.5 + m)]
    expected = -(z[0] - math.log(sum(math.exp(v) for v in z))) / tau
    assert margin_ce_loss(logits, y, eps, tau).item() == pytest.approx(expected, rel=1e-6)
    # eps 0, tau 1: plain cross-entropy
    assert margin_ce_loss(logits, y, 0.0, 1.0).item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_lr_schedules():
    from lipgraph.train.loop import _lr_factor

    assert _lr_factor("constant", 0.7) == 1.0
    assert _lr_factor("cosine", 0.0) == pytest.approx(1.0) and _lr_factor("cosine", 1.0) == pytest.approx(0.0)
    assert _lr_factor("cosine", 0.5) == pytest.approx(0.5)
    # one-cycle: 0.1 at the start, peak 1 at 10%, 0 at the end, monotone after the peak
    assert _lr_factor("onecycle", 0.0) == pytest.approx(0.1) and _lr_factor("onecycle", 0.1) == pytest.approx(1.0)
    assert _lr_factor("onecycle", 1.0) == pytest.approx(0.0, abs=1e-12)
    ts = [0.1 + 0.09 * i for i in range(11)]
    assert all(_lr_factor("onecycle", a) >= _lr_factor("onecycle", b) for a, b in zip(ts, ts[1:], strict=False))
