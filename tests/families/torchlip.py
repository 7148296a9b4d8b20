"""deel-torchlip (from PyPI): SpectralLinear / SpectralConv2d with GroupSort2, exported after
``vanilla_export()`` as users deploy them. The range: a Jacobian lower estimate and the product of the
exported layers' exact norms (deel's certificate is 1 up to its power-iteration estimate)."""

from __future__ import annotations

import torch
from torch import nn

from tests.families import FamilyModel
from tests.families._common import stage_product_range

FAMILY = "deel-torchlip (PyPI)"


def _vanilla(model) -> nn.Module:
    model.eval()
    with torch.no_grad():
        return model.vanilla_export().eval()


def _gs2():
    from deel import torchlip

    return torchlip.GroupSort2


def mlp():
    from deel import torchlip

    torch.manual_seed(70)
    return _vanilla(torchlip.Sequential(
        torchlip.SpectralLinear(16, 16), torchlip.GroupSort2(), torchlip.SpectralLinear(16, 16),
        torchlip.GroupSort2(), torchlip.SpectralLinear(16, 10),
    ))  # fmt: skip


def conv():
    from deel import torchlip

    torch.manual_seed(71)
    return _vanilla(torchlip.Sequential(
        torchlip.SpectralConv2d(2, 4, 3, padding=1), torchlip.GroupSort2(),
        torchlip.SpectralConv2d(4, 4, 3, padding=1), torchlip.GroupSort2(),
        nn.Flatten(), torchlip.SpectralLinear(4 * 6 * 6, 10),
    ))  # fmt: skip


def _range(shape):
    def fn(model):
        return stage_product_range(shape, (_gs2(),))(model)

    return fn


try:
    import deel.torchlip  # noqa: F401

    MODELS = [
        FamilyModel(FAMILY, "mlp", mlp, (1, 16), _range((1, 16))),
        FamilyModel(FAMILY, "conv", conv, (1, 2, 6, 6), _range((1, 2, 6, 6))),
    ]
except ImportError:  # the package is optional: no models without it
    MODELS = []
