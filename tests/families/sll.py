"""SLL, SDP-based Lipschitz layers (Araujo, Havens, Delattre, Allauzen, Hu 2023): ``x - 2 W T^-1 relu(W^T x + b)``.

``T = diag(t)``, ``t_i = sum_j |W^T W|_ij q_j / q_i`` with ``q > 0`` makes the block 1-Lipschitz
(the paper's Theorem 3). Conv version: Conv with kernel K, then ConvTranspose of the same K, with
``t_c`` the absolute row sums of the kernel's autocorrelation (an upper bound of every row sum of
``|Q Q^T|`` whatever the position, so the block stays 1-Lipschitz).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tests.families import FamilyModel, lower_and_certificate

FAMILY = "SLL (Araujo et al. 2023)"


class SLLDense(nn.Module):
    def __init__(self, features: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, hidden, generator=gen) / features**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=gen))
        self.q = nn.Parameter(torch.rand(hidden, generator=gen) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gram = (self.weight.t() @ self.weight).abs()
        t = (gram * self.q[None, :] / self.q[:, None]).sum(dim=1)
        h = torch.relu(F.linear(x, self.weight.t(), self.bias))
        return x - F.linear(h * (2.0 / t), self.weight)


class SLLConv(nn.Module):
    def __init__(self, channels: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(hidden, channels, 3, 3, generator=gen) / (3 * channels**0.5))
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        auto = F.conv2d(self.kernel, self.kernel, padding=2)  # (hidden, hidden, 5, 5)
        t = auto.abs().sum(dim=(1, 2, 3))
        h = torch.relu(F.conv2d(x, self.kernel, self.bias, padding=1))
        return x - F.conv_transpose2d(h * (2.0 / t)[None, :, None, None], self.kernel, padding=1)


def mlp(seed: int = 2, features: int = 12, hidden: int = 16, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    return nn.Sequential(*[SLLDense(features, hidden, gen) for _ in range(depth)]).eval()


def conv(seed: int = 3, channels: int = 2, hidden: int = 4, size: int = 5, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    return nn.Sequential(*[SLLConv(channels, hidden, gen) for _ in range(depth)], nn.Flatten()).eval()


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 12), lower_and_certificate((1, 12))),
    FamilyModel(FAMILY, "conv", conv, (1, 2, 5, 5), lower_and_certificate((1, 2, 5, 5))),
]
