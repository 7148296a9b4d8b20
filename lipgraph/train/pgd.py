"""Projected gradient descent attacks (L2 or Linf) for adversarial training; pixels stay in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "l2", steps: int = 10,
        step_size: float | None = None, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Maximise cross-entropy within the ``eps`` ball around ``x`` (random start, as AWP's AT code)."""
    if eps <= 0 or steps <= 0:
        return x.detach()
    step = step_size if step_size is not None else 2.5 * eps / steps
    x0 = x.detach()
    if norm == "linf":
        delta = torch.empty_like(x0).uniform_(-eps, eps)
    else:
        delta = torch.randn_like(x0)
        delta = delta / _flat_norm(delta) * eps * torch.rand(x0.shape[0], *([1] * (x0.dim() - 1)), device=x0.device)
    delta = ((x0 + delta).clamp(lo, hi) - x0).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x0 + delta), y)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if norm == "linf":
                delta = (delta + step * g.sign()).clamp(-eps, eps)
            else:
                delta = delta + step * g / _flat_norm(g)
                delta = delta * torch.clamp(eps / _flat_norm(delta), max=1.0)
            delta = (x0 + delta).clamp(lo, hi) - x0
    return (x0 + delta).detach()
