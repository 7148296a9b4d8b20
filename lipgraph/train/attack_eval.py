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
