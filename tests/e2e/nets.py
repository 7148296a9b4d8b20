"""Small torch networks shared by the end-to-end tests (exported to ONNX by both torch exporters).

Each ``make_*`` returns an eval-mode float32 model and the input shape it expects (batch 1).
The 1-Lipschitz nets use square Linear layers with orthogonal weights (``orthogonal_``) and a
sorting activation, so their true Lipschitz constant is at most 1 (exactly 1 along some direction
only when the activation pattern allows it).
"""

from __future__ import annotations

import torch
from torch import nn


class GroupSort(nn.Module):
    """Sort inside groups of ``g`` consecutive features: ``x.view(B, C/g, g).sort(-1)``."""

    def __init__(self, g: int) -> None:
        super().__init__()
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape
        return torch.sort(x.view(b, c // self.g, self.g), dim=-1, descending=True).values.view(b, c)


class MaxMin(nn.Module):
    """orthogonium-style MaxMin: halves along ``dim``, ``cat(max(a, b), min(a, b))``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=self.dim)


class PairSort(nn.Module):
    """deel-torchlip GroupSort2: pairs by reshape, ``cat(min, max)`` per pair, reshape back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fv = x.reshape(-1, 2)
        lo = torch.min(fv, dim=1, keepdim=True).values
        hi = torch.max(fv, dim=1, keepdim=True).values
        return torch.cat([lo, hi], dim=1).reshape(x.shape)


class CReLU(nn.Module):
    """deel-torchlip "MaxMin": ``cat(relu(x), relu(-x))`` along ``dim``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=self.dim)


class _Sequential1Lip(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _ortho_linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        w = torch.empty(n_out, n_in)
        torch.nn.init.orthogonal_(w, generator=gen)
        lin.weight.copy_(w)
        lin.bias.copy_(0.1 * torch.randn(n_out, generator=gen))
    return lin


def make_sorting_net(kind: str, width: int = 16, depth: int = 2, n_out: int = 10, seed: int = 0) -> nn.Module:
    """Orthogonal square Linear layers joined by a 1-Lipschitz sorting unit, then an orthogonal head.

    ``kind``: "groupsort" (g = 4), "maxmin", "pairsort" or "crelu" (CReLU doubles the width, so the
    next Linear is ``2 width -> width``, still orthogonal with norm 1).
    """
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    n = width
    for _ in range(depth):
        layers.append(_ortho_linear(n, width, gen))
        if kind == "groupsort":
            layers.append(GroupSort(4))
            n = width
        elif kind == "maxmin":
            layers.append(MaxMin(1))
            n = width
        elif kind == "pairsort":
            layers.append(PairSort())
            n = width
        elif kind == "crelu":
            layers.append(CReLU(1))
            n = 2 * width
        else:
            raise ValueError(kind)
    layers.append(_ortho_linear(n, n_out, gen))
    return _Sequential1Lip(layers).eval()


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 5)).eval()


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class SmallResNet(nn.Module):
    """Input normalisation, Conv -> BN -> Relu, two residual blocks, global pooling, Linear head."""

    def __init__(self, c: int = 8, n_out: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.2, 0.3]).view(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(_ResBlock(c), _ResBlock(c))
        self.head = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = torch.relu(self.bn(self.stem(x)))
        x = self.blocks(x)
        x = x.mean(dim=(2, 3))
        return self.head(x)


def make_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = SmallResNet()
    # Non-trivial BN statistics so that folding matters.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.3, 3.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def _randomise_bn(m: nn.Module) -> None:
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.3, 3.0)
                mod.weight.uniform_(-1.5, 1.5)  # some negative scales: folding must use |s| across Tanh
                mod.bias.uniform_(-0.2, 0.2)


def make_mlp_bn(seed: int = 0) -> nn.Module:
    """Linear -> BN1d -> Relu -> Linear -> BN1d -> Tanh -> Linear, plus a BN on the input."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16),
                      nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 5))
    _randomise_bn(m)
    return m.eval()


class PreActNet(nn.Module):
    """Pre-activation residual CNN (BN -> Relu -> Conv inside the blocks), which no exporter can fold."""

    def __init__(self, c: int = 8, n_out: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), nn.Conv2d(c, c, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        x = torch.relu(self.bn3(x))
        return self.head(x.mean(dim=(2, 3)))


def make_preact(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = PreActNet()
    _randomise_bn(m)
    return m.eval()


class L2PoolNet(nn.Module):
    """Conv -> LPPool2d(p=2, k=2) -> Linear (torch exports LPPool as Pow/AveragePool/Sign/.../Pow)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.pool = nn.LPPool2d(2, 2)
        self.head = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.conv(x)), 1))


def make_l2pool(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return L2PoolNet().eval()


INPUT_SHAPES = {
    "mlp": (1, 12),
    "mlp_bn": (1, 12),
    "preact": (1, 3, 8, 8),
    "cnn": (1, 3, 8, 8),
    "l2pool": (1, 2, 6, 6),
    "groupsort": (1, 16),
    "maxmin": (1, 16),
    "pairsort": (1, 16),
    "crelu": (1, 16),
}


def make(name: str) -> nn.Module:
    if name == "mlp":
        return make_mlp()
    if name == "cnn":
        return make_cnn()
    if name == "mlp_bn":
        return make_mlp_bn()
    if name == "preact":
        return make_preact()
    if name == "l2pool":
        return make_l2pool()
    return make_sorting_net(name)


def export(model: nn.Module, shape: tuple[int, ...], path: str, dynamo: bool) -> None:
    """Export with one of torch's two exporters (opset 18 for dynamo, 17 for the legacy one)."""
    x = torch.randn(*shape)
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, input_names=["x"],
                          output_names=["logits"], verbose=False, optimize=True)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"])
