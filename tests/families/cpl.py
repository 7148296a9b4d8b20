"""CPL, convex potential layers (Meunier, Delattre, Araujo, Allauzen 2022): ``x - 2/||W||^2 W^T relu(W x + b)``.

The block is the gradient step of a convex potential with step ``2/||W||^2``, hence 1-Lipschitz.
Conv version: a Conv and the ConvTranspose of the same kernel (zero padding), scaled by
``2 / ||conv||^2``. The norm is computed once at build time (the paper uses power iteration while
training; a deployed model holds the value as a constant).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tests.families import FamilyModel, lower_and_certificate

FAMILY = "CPL (Meunier et al. 2022)"


def _dense_norm(w: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(w.double(), ord=2))


def _conv_norm(w: torch.Tensor, shape: tuple[int, ...], pad: int) -> float:
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    cols = F.conv2d(basis, w.double(), padding=pad).reshape(n, -1)
    return float(torch.linalg.matrix_norm(cols, ord=2))


class CPLDense(nn.Module):
    def __init__(self, features: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(hidden, features, generator=gen) / features**0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=gen))
        self.register_buffer("scale", torch.tensor(2.0 / _dense_norm(self.weight.data) ** 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.linear(x, self.weight, self.bias))
        return x - self.scale * F.linear(h, self.weight.t())


class CPLConv(nn.Module):
    def __init__(self, channels: int, hidden: int, spatial: tuple[int, int], gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(hidden, channels, 3, 3, generator=gen) / (3 * channels**0.5))
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=gen))
        norm = _conv_norm(self.weight.data, (channels, *spatial), 1)
        self.register_buffer("scale", torch.tensor(2.0 / norm**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(F.conv2d(x, self.weight, self.bias, padding=1))
        return x - self.scale * F.conv_transpose2d(h, self.weight, padding=1)


def mlp(seed: int = 0, features: int = 12, hidden: int = 16, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [CPLDense(features, hidden, gen) for _ in range(depth)]
    head = nn.Linear(features, 4)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(features, 4, generator=gen))
        head.weight.copy_(q.t())
    return nn.Sequential(*layers, head).eval()


def conv(seed: int = 1, channels: int = 2, hidden: int = 4, size: int = 5, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [CPLConv(channels, hidden, (size, size), gen) for _ in range(depth)]
    return nn.Sequential(*layers, nn.Flatten()).eval()


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 12), lower_and_certificate((1, 12))),
    FamilyModel(FAMILY, "conv", conv, (1, 2, 5, 5), lower_and_certificate((1, 2, 5, 5))),
]
