"""Empirical robustness after training: PGD-L2 robust accuracy at the certified radii (``--attack-eval``).

A sample counts as robust at ``eps`` when it is classified correctly and a PGD-L2 attack (Madry et al. 2018)
inside the ``eps`` ball, pixels kept in [0, 1], does not flip it. The attack gives an UPPER estimate of the
true robust accuracy, the certificate a LOWER bound, so ``robust >= certified`` always, and the difference
(the certification gap) says how much a tighter bound or a better-trained network could still gain.
The attack runs on the exported function (the plain float32 layers written to ONNX), not on the training
graph, so it attacks exactly the model that is certified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lipgraph.train.pgd import pgd


@dataclass
class AttackConfig:
    steps: int = 50  # PGD steps per restart
    restarts: int = 2  # random starts; a sample is robust only if every restart fails
    batch: int = 256
    seed: int = 0


@torch.no_grad()
def _predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(x).argmax(1)


def robust_accuracy(
    net: nn.Module, x: np.ndarray, y: np.ndarray, eps: list[float], cfg: AttackConfig | None = None
) -> dict[float, float]:
    """``{eps: fraction correct and not flipped by PGD-L2 at eps}`` over ``(x, y)``; pixels in [0, 1]."""
    cfg = cfg or AttackConfig()
    net = net.eval()
    for p in net.parameters():
        p.requires_grad_(False)  # only the input needs a gradient
    torch.manual_seed(cfg.seed)
    n = len(x)
    out: dict[float, float] = {}
    for e in eps:
        robust = 0
        for i in range(0, n, cfg.batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + cfg.batch], dtype=np.float32))
            yb = torch.from_numpy(np.asarray(y[i : i + cfg.batch], dtype=np.int64))
            alive = _predict(net, xb) == yb
            for _ in range(cfg.restarts):
                if not bool(alive.any()):
                    break
                idx = alive.nonzero().squeeze(1)
                adv = pgd(net, xb[idx], yb[idx], float(e), "l2", cfg.steps)
                alive[idx] = _predict(net, adv) == yb[idx]
            robust += int(alive.sum())
        out[float(e)] = robust / max(1, n)
    return out


def _pgd_per_sample(net: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: torch.Tensor, steps: int) -> torch.Tensor:
    """PGD-L2 on the cross-entropy with one radius per sample (a random start inside each ball, pixels in [0, 1])."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    r = radius.view(shape)
    step = 2.5 * r / steps

    def norm(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)

    delta = torch.randn_like(x)
    delta = delta / norm(delta) * r * torch.rand(len(x), device=x.device).view(shape)
    delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(net(x + delta), y)
            (g,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + step * g / norm(g)
        delta = delta * torch.clamp(r / norm(delta), max=1.0)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


@torch.no_grad()
def flips_inside_radii(net: nn.Module, x: np.ndarray, y: np.ndarray, radii: np.ndarray,
                       cfg: AttackConfig | None = None) -> dict[str, int]:
    """PGD-L2 inside every certified sample's OWN radius: how many flip (0 unless a certificate is wrong).

    Samples with a positive certified radius (correct ones: certify gives 0 to the others) are attacked at
    exactly that radius, every restart counted. A flip would be a counterexample to the certificate; none
    is evidence (an attack may miss), not proof. Returns ``{"attacked": n, "flipped": m}``.
    """
    cfg = cfg or AttackConfig()
    net = net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    idx_all = np.flatnonzero(np.asarray(radii) > 0)
    flipped = 0
    for i in range(0, len(idx_all), cfg.batch):
        idx = idx_all[i : i + cfg.batch]
        xb = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))
        yb = torch.from_numpy(np.asarray(y[idx], dtype=np.int64))
        r64 = np.asarray(radii[idx], dtype=np.float64)
        r32 = r64.astype(np.float32)
        r32 = np.where(r32 > r64, np.nextafter(r32, np.float32(0)), r32)  # never attack outside the radius
        rb = torch.from_numpy(r32)
        alive = _predict(net, xb) == yb
        for _ in range(cfg.restarts):
            adv = _pgd_per_sample(net, xb, yb, rb, cfg.steps)
            alive &= _predict(net, adv) == yb
        flipped += int((~alive).sum())
    return {"attacked": int(len(idx_all)), "flipped": flipped}
