"""AOL (Prach & Lampert 2022): almost-orthogonal layers ``W diag(d)``, ``d_j = (sum_i |W^T W|_ji)^-1/2``
(conv: the same with the kernel's self-correlation, zero padding), each of norm <= 1 by the Schur test.
The truth is known as a range: a Jacobian lower estimate and the family's certificate 1."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.families import FamilyModel, lower_and_certificate
from tests.families._common import MaxMin, linear_from, rng

FAMILY = "AOL (Prach & Lampert 2022)"


def aol_matrix(w: np.ndarray) -> np.ndarray:
    d = np.abs(w.T @ w).sum(axis=1) ** -0.5
    return w * d[None, :]


def aol_kernel(k: np.ndarray) -> np.ndarray:
    """Rescale the input channels of a (c_out, c_in, kh, kw) kernel by the AOL factors of its conv."""
    c_out, c_in, kh, kw = k.shape
    # P[j, i, dy, dx] = sum_{o, y, x} K[o, j, y, x] K[o, i, y + dy, x + dx]: the kernel of K^T K.
    p = np.zeros((c_in, c_in, 2 * kh - 1, 2 * kw - 1))
    for dy in range(-kh + 1, kh):
        for dx in range(-kw + 1, kw):
            for y in range(kh):
                for x in range(kw):
                    if 0 <= y + dy < kh and 0 <= x + dx < kw:
                        p[:, :, dy + kh - 1, dx + kw - 1] += k[:, :, y, x].T @ k[:, :, y + dy, x + dx]
    d = np.abs(p).sum(axis=(1, 2, 3)) ** -0.5
    return k * d[None, :, None, None]


def _conv(c_in: int, c_out: int, seed: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(aol_kernel(rng(seed).standard_normal((c_out, c_in, 3, 3)))))
    return conv


def mlp():
    r = rng(50)
    return nn.Sequential(
        linear_from(aol_matrix(r.standard_normal((16, 16)))),
        MaxMin(),
        linear_from(aol_matrix(r.standard_normal((16, 16)))),
        MaxMin(),
        linear_from(aol_matrix(r.standard_normal((10, 16)))),
    ).eval()


def conv():
    r = rng(51)
    return nn.Sequential(
        _conv(2, 4, 52),
        MaxMin(),
        _conv(4, 4, 53),
        MaxMin(),
        nn.Flatten(),
        linear_from(aol_matrix(r.standard_normal((10, 4 * 6 * 6)))),
    ).eval()


MODELS = [
    FamilyModel(FAMILY, "mlp", mlp, (1, 16), lower_and_certificate((1, 16))),
    FamilyModel(FAMILY, "conv", conv, (1, 2, 6, 6), lower_and_certificate((1, 2, 6, 6))),
]
