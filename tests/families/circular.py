"""Plain user convs with ``padding_mode="circular"`` (random kernels, strides, a linear net): the true
constant is the exact dense-Jacobian norm; and a nonlinear net bounded by the product of exact layer norms."""

from __future__ import annotations

import torch
from torch import nn

from tests.families import FamilyModel, linear_truth

FAMILY = "circular (torch padding_mode='circular')"


def linear_net():
    torch.manual_seed(40)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(4, 4, 3, padding=1, stride=2, padding_mode="circular"),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 10),
    ).eval()


def single_conv():
    torch.manual_seed(41)
    return nn.Sequential(nn.Conv2d(3, 5, 5, padding=2, padding_mode="circular")).eval()


MODELS = [
    FamilyModel(FAMILY, "linear-conv", linear_net, (1, 2, 6, 6), linear_truth((1, 2, 6, 6))),
    FamilyModel(FAMILY, "conv5x5", single_conv, (1, 3, 7, 7), linear_truth((1, 3, 7, 7))),
]
