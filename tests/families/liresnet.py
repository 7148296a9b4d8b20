"""LiResNet (Hu et al. 2023): linear residual blocks ``x + W x`` with MinMax written with torch.where,
certified by the product of the blocks' exact norms ``||I + W||``. The range: a Jacobian lower estimate
and that product (each factor an exact dense SVD of the layer, computed here with torch)."""

from __future__ import annotations

import torch
from torch import nn

from tests.families import FamilyModel
from tests.families._common import stage_product_range

FAMILY = "LiResNet (Hu et al. 2023)"


class WhereMinMax(nn.Module):
    """LiResNet's MinMax: ``where(a > b, a, b)`` and ``where(a > b, b, a)`` of the two channel halves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.where(a > b, a, b), torch.where(a > b, b, a)], dim=1)


class Residual(nn.Module):
    def __init__(self, layer: nn.Module, scale: float) -> None:
        super().__init__()
        self.layer = layer
        with torch.no_grad():
            for p in layer.parameters():
                p.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(x)


def mlp():
    torch.manual_seed(60)
    return nn.Sequential(
        nn.Linear(12, 16), Residual(nn.Linear(16, 16), 0.3), WhereMinMax(),
        Residual(nn.Linear(16, 16), 0.3), WhereMinMax(), nn.Linear(16, 10),
    ).eval()  # fmt: skip


def conv():
    torch.manual_seed(61)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), Residual(nn.Conv2d(4, 4, 3, padding=1), 0.3), WhereMinMax(),
        Residual(nn.Conv2d(4, 4, 3, padding=1), 0.3), WhereMinMax(), nn.Flatten(), nn.Linear(4 * 5 * 5, 10),
    ).eval()  # fmt: skip


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 12), stage_product_range((1, 12), (WhereMinMax,))),
    FamilyModel(FAMILY, "conv", conv, (1, 2, 5, 5), stage_product_range((1, 2, 5, 5), (WhereMinMax,))),
]
