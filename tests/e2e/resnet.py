"""A CIFAR ResNet-18 in plain torch (no torchvision here), for the bound benchmark and e2e tests.

The usual CIFAR variant (He et al. 2016, as in many CIFAR training repos): a 3x3 stem conv with 64
channels and no max pooling, four stages of two BasicBlocks with 64-128-256-512 channels (stride 2
at the start of stages 2-4, with a 1x1 strided conv + BN on the shortcut), global average pooling
and a Linear head. ``make_resnet18`` gives BN non-trivial running statistics and affine parameters
so that BN folding matters, and returns the model in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x32x32 input, 10 logits, about 11.2 M parameters."""

    def __init__(self, n_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1)))
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Random-ish BN statistics and affine parameters, as a trained network would have."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                mod.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=gen))
                mod.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(n, generator=gen))


def make_resnet18(seed: int = 0, widths: tuple[int, ...] = (64, 128, 256, 512)) -> ResNet18:
    """Random-init ResNet-18 (torch's default init) with randomized BN, in eval mode."""
    torch.manual_seed(seed)
    model = ResNet18(widths=widths)
    randomize_bn(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()
