"""Cayley layers (Trockman & Kolter 2021): W = (I + S)^-1 (I - S), S skew; convs orthogonalised per
frequency and deployed as full-size circular kernels. MLP and conv net, both exactly 1-Lipschitz."""

from __future__ import annotations

import numpy as np

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import cayley, fft_orthogonal_kernel, orthogonal_conv_net, orthogonal_mlp, rng

FAMILY = "Cayley (Trockman & Kolter 2021)"
N = 5  # grid of the conv net (odd: the full-size kernel gets symmetric circular padding)


def _square(d: int, seed: int) -> np.ndarray:
    return cayley(rng(seed).standard_normal((d, d)))


def mlp():
    return orthogonal_mlp(_square, d=16, seed=10)


def conv():
    ks = [fft_orthogonal_kernel(4, N, 3, seed, "cayley") for seed in (11, 12)]
    return orthogonal_conv_net(ks, N, seed=13)


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 16), lower_and_certificate((1, 16))),
    FamilyModel(FAMILY, "conv", conv, (1, 4, N, N), lower_and_certificate((1, 4, N, N))),
]
