"""orthogonium-style AOC (adaptive orthogonal convolution, Boissin et al. 2025): a BCOP kernel composed
with an RKO kernel (a stride-s conv whose (c_out, c_in s^2) reshaped kernel is orthogonal), as one strided
conv with circular padding written by hand (``F.pad(mode="circular")``, asymmetric for the even composite
kernel). Exactly orthogonal when s divides the grid; the nets are exactly 1-Lipschitz."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import MaxMin, bcop_kernel, compose_kernels, linear_from, orthogonal_rows, polar, rng

FAMILY = "AOC (orthogonium, Boissin et al. 2025)"
N = 6


class StridedCircularConv(nn.Module):
    def __init__(self, kernel: np.ndarray, stride: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(kernel).float())
        self.bias = nn.Parameter(torch.linspace(-0.1, 0.1, kernel.shape[0]))
        k = kernel.shape[2]
        self.pads = (k // 2 - (1 - k % 2), k // 2) * 2  # (left, right, top, bottom), total k - 1
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads, mode="circular"), self.weight, self.bias, stride=self.stride)


def aoc_kernel(c: int, s: int, seed: int) -> np.ndarray:
    """BCOP 3x3 (c -> c) then RKO s x s stride s (c -> c s^2): the (c s^2, c, 3 + s - 1, 3 + s - 1) kernel."""
    rko = polar(rng(seed + 1).standard_normal((c * s * s, c * s * s))).reshape(c * s * s, c, s, s)
    return compose_kernels(rko, bcop_kernel(c, 3, seed))


def conv():
    return nn.Sequential(
        StridedCircularConv(bcop_kernel(4, 3, 80), 1),
        MaxMin(),
        StridedCircularConv(aoc_kernel(4, 2, 81), 2),  # 4 x 6 x 6 -> 16 x 3 x 3, orthogonal
        MaxMin(),
        nn.Flatten(),
        linear_from(orthogonal_rows(10, 144, 82)),
    ).eval()


def mlp():
    r = rng(83)
    return nn.Sequential(
        linear_from(polar(r.standard_normal((16, 16)))), MaxMin(),
        linear_from(polar(r.standard_normal((16, 16)))), MaxMin(), linear_from(orthogonal_rows(10, 16, 84)),
    ).eval()  # fmt: skip


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 16), lower_and_certificate((1, 16))),
    FamilyModel(FAMILY, "conv", conv, (1, 4, N, N), lower_and_certificate((1, 4, N, N))),
]
