"""LOT (Xu et al. 2022): per-frequency orthogonalisation V (V^H V)^-1/2 of a conv symbol, deployed as a
full-size circular kernel; the dense layer is the same polar factor. Both exactly 1-Lipschitz."""

from __future__ import annotations

import numpy as np

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import fft_orthogonal_kernel, orthogonal_conv_net, orthogonal_mlp, polar, rng

FAMILY = "LOT (Xu et al. 2022)"
N = 5


def _square(d: int, seed: int) -> np.ndarray:
    return polar(rng(seed).standard_normal((d, d)))


def mlp():
    return orthogonal_mlp(_square, d=16, seed=20)


def conv():
    ks = [fft_orthogonal_kernel(4, N, 3, seed, "polar") for seed in (21, 22)]
    return orthogonal_conv_net(ks, N, seed=23, head="first")


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 16), lower_and_certificate((1, 16))),
    FamilyModel(FAMILY, "conv", conv, (1, 4, N, N), lower_and_certificate((1, 4, N, N))),
]
