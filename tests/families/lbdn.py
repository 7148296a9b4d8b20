"""Sandwich layers / LBDN (Wang and Manchester 2023): ``sqrt(2) A^T Psi relu(sqrt(2) Psi^-1 B x + b)``.

``[A B]`` has orthonormal rows (the paper gets it from a Cayley transform; here from a QR
factorisation) and ``Psi`` is a positive diagonal, which makes each layer 1-Lipschitz (the paper's
Theorem 3.3). The net is a chain of such layers and a final orthonormal linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from tests.families import FamilyModel, lower_and_certificate

FAMILY = "LBDN (Wang & Manchester 2023)"


class SandwichDense(nn.Module):
    def __init__(self, fin: int, fout: int, hidden: int, gen: torch.Generator) -> None:
        super().__init__()
        assert hidden <= fin + fout
        q, _ = torch.linalg.qr(torch.randn(fin + fout, hidden, generator=gen, dtype=torch.float64))
        ab = q.t()  # hidden x (fout + fin), orthonormal rows
        self.a = nn.Parameter(ab[:, :fout].float())  # hidden x fout
        self.b = nn.Parameter(ab[:, fout:].float())  # hidden x fin
        self.log_psi = nn.Parameter(0.5 * torch.randn(hidden, generator=gen))
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        psi = torch.exp(self.log_psi)
        h = torch.relu(2**0.5 * (x @ self.b.t()) / psi + self.bias)
        return 2**0.5 * (h * psi) @ self.a


def mlp(seed: int = 4, features: int = 10, width: int = 12, hidden: int = 16, depth: int = 3) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    dims = [features] + [width] * depth
    layers: list[nn.Module] = [SandwichDense(dims[i], dims[i + 1], hidden, gen) for i in range(depth)]
    head = nn.Linear(width, 4)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(width, 4, generator=gen))
        head.weight.copy_(q.t())
    return nn.Sequential(*layers, head).eval()


MODELS = [FamilyModel(FAMILY, "mlp", mlp, (1, 10), lower_and_certificate((1, 10)))]
