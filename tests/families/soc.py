"""SOC, skew orthogonal convolution (Singla and Feizi 2021): ``x + sum_{i=1..m} A^i x / i!``.

A is a convolution with a skew-adjoint kernel ``W = K - flip(K)^T`` (zero padding "same", stride
1), so ``exp(A)`` is orthogonal and the truncated series is nearly so. The dense version is the
same series with a skew-symmetric matrix. These nets are linear: their exact constant is the
largest singular value of the dense Jacobian.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tests.families import FamilyModel, linear_truth

FAMILY = "SOC (Singla & Feizi 2021)"


def skew_kernel(k: torch.Tensor) -> torch.Tensor:
    return k - k.transpose(0, 1).flip(2, 3)


class SOCConv(nn.Module):
    def __init__(self, channels: int, terms: int, gen: torch.Generator, scale: float = 0.12) -> None:
        super().__init__()
        self.kernel = nn.Parameter(scale * torch.randn(channels, channels, 3, 3, generator=gen))
        self.terms = terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = skew_kernel(self.kernel)
        z, out = x, x
        for i in range(1, self.terms + 1):
            z = F.conv2d(z, w, padding=1) / i
            out = out + z
        return out


class SOCDense(nn.Module):
    def __init__(self, features: int, terms: int, gen: torch.Generator, scale: float = 0.15) -> None:
        super().__init__()
        self.weight = nn.Parameter(scale * torch.randn(features, features, generator=gen))
        self.terms = terms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.t()
        z, out = x, x
        for i in range(1, self.terms + 1):
            z = (z @ w) / i
            out = out + z
        return out


def mlp(seed: int = 5, features: int = 10, terms: int = 6, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    return nn.Sequential(*[SOCDense(features, terms, gen) for _ in range(depth)]).eval()


def conv(seed: int = 6, channels: int = 3, size: int = 5, terms: int = 6, depth: int = 2) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    return nn.Sequential(*[SOCConv(channels, terms, gen) for _ in range(depth)], nn.Flatten()).eval()


# Linear nets: the truth is the exact dense Jacobian norm (the truncated series is not exactly
# orthogonal, so it is a little above 1; the family's certificate is that exact value).
MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 10), linear_truth((1, 10))),
    FamilyModel(FAMILY, "conv", conv, (1, 3, 5, 5), linear_truth((1, 3, 5, 5))),
]
