"""Crafted chains for the per-sample local bounds (``lipgraph.local_bounds``), as ``CertCase`` for the attack of
``tests.adversarial.certificates``: the shapes a chain reader can get wrong (a bias split over an Add and a Sub
of constants, a MatMul plus Add instead of a Gemm, Flatten / Reshape between layers, an input that is not flat),
LeakyReLU with slopes 0 and 1, one hidden unit, two classes, weights from 1e-3 to 1e3, from both of torch's
exporters. Driven by one integer seed.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from tests.adversarial.certificates import CertCase, _boundary_points


class _SplitBias(nn.Module):
    """``x W^T + b1 - b2``: a MatMul and two constants to sum into one bias."""

    def __init__(self, d_in: int, d_out: int, gen: torch.Generator):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_out, d_in, generator=gen) / d_in**0.5)
        self.b1 = nn.Parameter(torch.randn(d_out, generator=gen) * 0.3)
        self.b2 = nn.Parameter(torch.randn(d_out, generator=gen) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T + self.b1 - self.b2


class _Chain(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], widths: list[int], classes: int, slopes: list[float], seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.in_shape = in_shape
        d = int(np.prod(in_shape))
        self.layers = nn.ModuleList()
        self.acts = nn.ModuleList()
        for k, (w, a) in enumerate(zip(widths, slopes, strict=True)):
            self.layers.append(_SplitBias(d, w, gen) if k % 2 == 0 else nn.Linear(d, w))
            self.acts.append(nn.ReLU() if a == 0.0 and k % 2 else nn.LeakyReLU(a))
            d = w
        self.head = nn.Linear(d, classes)
        with torch.no_grad():  # no class wins everywhere by its bias alone: the data then has decision boundaries
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for k, (lay, act) in enumerate(zip(self.layers, self.acts, strict=True)):
            h = act(lay(h))
            w = int(h.shape[1])
            if k == 0 and w % 2 == 0:  # a Reshape to (n, 2, w/2) and back in the middle of the chain
                h = h.reshape(-1, 2, w // 2).reshape(-1, w)
        return self.head(h)


def generate_local(seed: int, n: int = 40) -> CertCase:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    in_shape = [(6,), (2, 3), (1, 3, 3)][seed % 3]
    depth = int(rng.integers(1, 4))
    widths = [1 if seed % 5 == 0 and k == 0 else int(rng.integers(2, 13)) for k in range(depth)]
    slopes = [float(rng.choice([0.0, 0.01, 0.2, 1.0])) for _ in range(depth)]
    classes = 2 if seed % 2 else int(rng.integers(3, 6))
    model = _Chain(in_shape, widths, classes, slopes, seed)
    scale = float(rng.choice([1e-3, 1.0, 30.0, 1e3]))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale ** (1.0 / (depth + 1)))
    model.eval()
    x = torch.randn(n, *in_shape)
    x = torch.cat([x[: n // 2], _boundary_points(model, x, rng, n - n // 2)])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *in_shape),),
            buf,
            dynamo=seed % 4 == 3,
            opset_version=18,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}} if seed % 4 != 3 else None,
            dynamic_shapes=({0: torch.export.Dim("n")},) if seed % 4 == 3 else None,
        )
    proto = onnx.load_from_string(buf.getvalue())
    act = "/".join(f"leaky{a:g}" for a in slopes)
    return CertCase(seed, "chain", act, scale, 1.0, model, proto, x.numpy().astype(np.float32))
