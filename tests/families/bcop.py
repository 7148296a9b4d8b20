"""BCOP (Li et al. 2019): orthogonal 3x3 kernels from block convolutions of symmetric projectors, with
circular padding; dense layers by Björck orthonormalisation (its fixed point, the polar factor)."""

from __future__ import annotations

import numpy as np

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import bcop_kernel, orthogonal_conv_net, orthogonal_mlp, polar, rng

FAMILY = "BCOP (Li et al. 2019)"
N = 6


def _square(d: int, seed: int) -> np.ndarray:
    return polar(rng(seed).standard_normal((d, d)))


def mlp():
    return orthogonal_mlp(_square, d=16, seed=30)


def conv():
    ks = [bcop_kernel(4, 3, seed) for seed in (31, 32)]  # two 2-tap blocks per axis -> 3x3 kernels
    return orthogonal_conv_net(ks, N, seed=33, head="first")


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 16), lower_and_certificate((1, 16))),
    FamilyModel(FAMILY, "conv", conv, (1, 4, N, N), lower_and_certificate((1, 4, N, N))),
]
