"""Plain-torch model definitions for the scale benchmarks (no torchvision): MLPs, ResNet-18/34/50 with a
CIFAR stem (32 x 32 inputs) or the ImageNet stem (224 x 224), and a small ViT-style transformer.

Random init, BatchNorm in eval mode with randomized statistics (as a trained network would have).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c)
        self.short = nn.Identity()
        if stride != 1 or c_in != c:
            self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), _bn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        out = c * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, c, 1, bias=False), _bn(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, stride, 1, bias=False), _bn(c)
        self.conv3, self.bn3 = nn.Conv2d(c, out, 1, bias=False), _bn(out)
        self.short = nn.Identity()
        if stride != 1 or c_in != out:
            self.short = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), _bn(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.short(x))


class ResNet(nn.Module):
    def __init__(self, block: type, layers: list[int], imagenet: bool, classes: int) -> None:
        super().__init__()
        if imagenet:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), _bn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), _bn(64), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = 64
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (i > 0 and j == 0) else 1))
                c_in = c * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


RESNETS = {"resnet18": (Basic, [2, 2, 2, 2]), "resnet34": (Basic, [3, 4, 6, 3]), "resnet50": (Bottleneck, [3, 4, 6, 3])}


def randomize_bn(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(torch.empty(n).uniform_(0.5, 2.0, generator=gen))
                m.weight.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def resnet(name: str, size: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    block, layers = RESNETS[name]
    model = ResNet(block, layers, imagenet=size >= 128, classes=1000 if size >= 128 else 10)
    randomize_bn(model, seed + 1)
    return model.eval()


def mlp(width: int, depth: int, d_in: int = 784, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    c = d_in
    for _ in range(depth):
        layers += [nn.Linear(c, width), nn.ReLU()]
        c = width
    layers.append(nn.Linear(c, classes))
    return nn.Sequential(*layers).eval()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d // self.heads), dim=-1)
        return self.proj(torch.matmul(att, v).transpose(1, 2).reshape(b, n, d))


class ViT(nn.Module):
    """Patch embedding (a strided conv), pre-norm transformer blocks, class token, linear head."""

    def __init__(self, size: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (size // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            self.blocks.append(nn.ModuleDict({
                "n1": nn.LayerNorm(dim), "att": Attention(dim, heads), "n2": nn.LayerNorm(dim),
                "mlp": nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)),
            }))
        self.head = nn.Linear(dim, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for blk in self.blocks:
            x = x + blk["att"](blk["n1"](x))
            x = x + blk["mlp"](blk["n2"](x))
        return self.head(x[:, 0])


def vit(seed: int = 0, **kw: int) -> nn.Module:
    torch.manual_seed(seed)
    return ViT(**kw).eval()
