"""Architecture presets sized for digits (1x8x8) and MNIST (1x28x28).

* ``mlp``: Flatten -> 128 -> 128 -> classes.
* ``mlp-wide``: Flatten -> 256 -> 256 -> 256 -> classes (MNIST).
* ``mlp-WxD``: Flatten -> D hidden layers of width W -> classes (for example ``mlp-512x3``).
* ``cnn``: Wong & Kolter's small CNN as in LMT's MNIST config: conv16 k4 s2 p1 -> conv32 k4 s2 p1 ->
  fc100 -> classes (works on 8x8 and 28x28 inputs).

ReLU for ``plain``/``lmt``/``awp``; MaxMin with Björck-orthonormal layers for ``groupsort``.
* ``aol-cnn``: AOL-rescaled convolutions with MaxMin (Prach & Lampert 2022), 1-Lipschitz for any weights
  and any ``--method``: conv16 k3 -> conv16 k3 -> down32 (k2 s2) -> conv32 k3 -> down64 (k2 s2) ->
  fc256 -> classes, MaxMin after every layer but the last (``lipgraph.train.aol``).
* ``sll-cnn``: SLL residual blocks (Araujo et al. 2023) between AOL layers, 1-Lipschitz for any weights:
  conv16 k3 -> 2 SLL conv blocks -> down32 (k2 s2) -> 2 SLL conv blocks -> down64 (k2 s2) -> fc256 ->
  SLL dense block -> classes (``lipgraph.train.sll``; the ReLU inside each block is the nonlinearity).

Strided convolutions instead of pooling keep the bound a plain product of operator norms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lipgraph.errors import LipgraphError
from lipgraph.train.layers import BoundedConv2d, BoundedLinear, MaxMin

ARCHS = ("mlp", "mlp-wide", "mlp-WxD", "cnn", "aol-cnn", "sll-cnn")


def _mlp_widths(arch: str) -> list[int] | None:
    if arch == "mlp":
        return [128, 128]
    if arch == "mlp-wide":
        return [256, 256, 256]
    if arch.startswith("mlp-") and "x" in arch:
        w, _, d = arch[4:].partition("x")
        if w.isdigit() and d.isdigit() and int(w) >= 2 and int(w) % 2 == 0 and 1 <= int(d) <= 16:
            return [int(w)] * int(d)
    return None


class LipNet(nn.Module):
    """A feed-forward stack whose Lipschitz estimate is the product of its layers' estimates.

    ``forward(x)`` returns logits; ``forward(x, with_bound=True)`` returns ``(logits, L_h, W_last)``
    where ``L_h`` is the trainer's estimate of the Lipschitz constant of the map to the last layer's
    input and ``W_last`` the effective last weight (for LMT's pairwise guard, docs/certificate.md).
    Activations (ReLU, MaxMin) and Flatten are 1-Lipschitz.
    """

    def __init__(self, layers: list[nn.Module], arch: str, in_shape: tuple[int, ...], n_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.arch = arch
        self.in_shape = tuple(in_shape)
        self.n_classes = n_classes
        assert isinstance(layers[-1], BoundedLinear)

    def bounded(self) -> list[nn.Module]:
        return [m for m in self.layers if isinstance(m, BoundedLinear | BoundedConv2d)]

    def sub_bound(self, update: bool) -> torch.Tensor:
        l_h = torch.ones((), device=self.layers[-1].weight.device)
        for m in self.bounded()[:-1]:
            l_h = l_h * m.lipschitz_estimate(update=update)
        return l_h

    def forward(self, x: torch.Tensor, with_bound: bool = False, update: bool = True):
        for m in self.layers:
            x = m(x)
        if not with_bound:
            return x
        last = self.layers[-1]
        return x, self.sub_bound(update and self.training), last.effective_weight()

    @torch.no_grad()
    def refresh(self, iters: int = 30) -> None:
        """More power-iteration steps on every layer's persistent vector (for reporting/export)."""
        for m in self.bounded():
            m.power_step(m.effective_weight().detach(), iters)

    @torch.no_grad()
    def bound_estimate(self) -> float:
        """The trainer's estimate of the whole network's L2 Lipschitz constant (a LOWER estimate per layer)."""
        total = 1.0
        for m in self.bounded():
            total *= float(m.lipschitz_estimate(update=False))
        return total


def _aol_cnn(in_shape: tuple[int, int, int], n_classes: int, width: int = 16) -> list[nn.Module]:
    from lipgraph.train.aol import AOLConv2d, AOLLinear

    layers: list[nn.Module] = []
    shape = tuple(in_shape)
    for c_out, k, s in ((width, 3, 1), (width, 3, 1), (2 * width, 2, 2), (2 * width, 3, 1), (4 * width, 2, 2)):
        if s > 1 and (shape[1] < s or shape[2] < s):
            raise LipgraphError(f"--arch aol-cnn needs inputs of at least 4x4 pixels, got {shape[1]}x{shape[2]}")
        conv = AOLConv2d(shape, c_out, k, stride=s)
        layers += [conv, MaxMin()]
        shape = conv.out_shape()
    layers += [nn.Flatten(), AOLLinear(math.prod(shape), 16 * width), MaxMin(), AOLLinear(16 * width, n_classes)]
    return layers


def _sll_cnn(in_shape: tuple[int, int, int], n_classes: int, width: int = 16, blocks: int = 2) -> list[nn.Module]:
    from lipgraph.train.aol import AOLConv2d, AOLLinear
    from lipgraph.train.sll import SLLConv2d, SLLDense

    if in_shape[1] < 4 or in_shape[2] < 4:
        raise LipgraphError(f"--arch sll-cnn needs inputs of at least 4x4 pixels, got {in_shape[1]}x{in_shape[2]}")
    stem = AOLConv2d(tuple(in_shape), width, 3)
    layers: list[nn.Module] = [stem]
    shape = stem.out_shape()
    for stage in range(3):  # SLL blocks at 3 resolutions, an AOL downsampling between them
        layers += [SLLConv2d(shape[0], shape[0]) for _ in range(blocks)]
        if stage == 2:
            break
        down = AOLConv2d(shape, 2 * shape[0], 2, stride=2)
        layers.append(down)
        shape = down.out_shape()
    layers += [
        nn.Flatten(),
        AOLLinear(math.prod(shape), 16 * width),
        SLLDense(16 * width, 16 * width),
        AOLLinear(16 * width, n_classes),
    ]
    return layers


def build_model(arch: str, in_shape: tuple[int, int, int], n_classes: int, method: str,
                bjorck_iters: int = 10) -> LipNet:
    ortho = method == "groupsort"

    def act(_c: int) -> nn.Module:
        return MaxMin() if ortho else nn.ReLU()

    layers: list[nn.Module] = []
    d = math.prod(in_shape)
    widths = _mlp_widths(arch)
    if widths is not None:
        layers.append(nn.Flatten())
        for w in widths:
            layers += [BoundedLinear(d, w, ortho, bjorck_iters), act(w)]
            d = w
        layers.append(BoundedLinear(d, n_classes, ortho, bjorck_iters))
    elif arch == "cnn":
        c1 = BoundedConv2d(in_shape, 16, 4, stride=2, padding=1, ortho=ortho, bjorck_iters=bjorck_iters)
        c2 = BoundedConv2d(c1.out_shape(), 32, 4, stride=2, padding=1, ortho=ortho, bjorck_iters=bjorck_iters)
        flat = math.prod(c2.out_shape())
        layers = [c1, act(16), c2, act(32), nn.Flatten(),
                  BoundedLinear(flat, 100, ortho, bjorck_iters), act(100),
                  BoundedLinear(100, n_classes, ortho, bjorck_iters)]
    elif arch == "aol-cnn":
        layers = _aol_cnn(in_shape, n_classes)
    elif arch == "sll-cnn":
        layers = _sll_cnn(in_shape, n_classes)
    else:
        raise LipgraphError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return LipNet(layers, arch, in_shape, n_classes)
