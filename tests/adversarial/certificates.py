"""An adversarial generator for *certificates*: random small classifiers (ReLU, LeakyReLU, Tanh MLPs, conv
nets, residual blocks), weights at scales that stress the float allowance (large weights whose biases cancel
them, inputs from 0.01 to 100), and data planted on the decision boundary (tiny margins, found by bisection
between points the model classifies differently). Each model goes through torch's exporter and
``lipgraph.certify`` with its default options; then every certified sample is attacked inside its radius:
L2 PGD on the torch copy plus random points on the sphere, every candidate confirmed through ONNX Runtime
(the certificate speaks of ONNX Runtime's float32 outputs). A flip is a certificate an attacker can fake.

Driven by one integer seed: ``generate(seed)`` reproduces a case.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from lipgraph.certify import certify
from tests.helpers.onnx_oracle import runner

KINDS = ["mlp", "mlp", "cnn", "residual"]
ACTIVATIONS = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.1), "tanh": nn.Tanh}


@dataclass
class CertCase:
    seed: int
    kind: str
    activation: str
    weight_scale: float
    input_scale: float
    model: nn.Module
    proto: onnx.ModelProto
    x: np.ndarray  # (n, *input shape) float32

    def __repr__(self) -> str:
        return (
            f"CertCase(seed={self.seed}, {self.kind}, {self.activation}, weights x{self.weight_scale:g}, "
            f"inputs x{self.input_scale:g}, n={len(self.x)})"
        )


class _Residual(nn.Module):
    def __init__(self, d: int, hidden: int, act: nn.Module):
        super().__init__()
        self.inner = nn.Linear(d, hidden)
        self.outer = nn.Linear(hidden, d)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(self.act(self.inner(x)))


def _scale_weights(model: nn.Module, rng: np.random.Generator, scale: float, x_typical: torch.Tensor) -> None:
    """Weights times ``scale``; for large scales each linear layer's bias cancels its output at a typical
    input (large terms that nearly cancel: the hard case of a float error bound)."""
    with torch.no_grad():
        h = x_typical
        for layer in model.modules():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                layer.weight.mul_(scale * float(rng.uniform(0.5, 2.0)))
                if (
                    scale > 10
                    and layer.bias is not None
                    and isinstance(layer, nn.Linear)
                    and h.shape[-1] == layer.in_features
                ):
                    layer.bias.copy_(-(h @ layer.weight.T).mean(0) + 0.01 * layer.bias)
                if isinstance(layer, nn.Linear) and h.shape[-1] == layer.in_features:
                    h = torch.relu(h @ layer.weight.T + layer.bias)


def _build(rng: np.random.Generator, kind: str, act_name: str) -> tuple[nn.Module, tuple[int, ...]]:
    act = ACTIVATIONS[act_name]
    classes = int(rng.integers(2, 6))
    if kind == "cnn":
        ch = int(rng.integers(1, 3))
        side = int(rng.integers(4, 7))
        hidden = int(rng.integers(2, 5))
        model = nn.Sequential(
            nn.Conv2d(ch, hidden, 3, padding=1), act(), nn.Flatten(), nn.Linear(hidden * side * side, classes)
        )
        return model, (ch, side, side)
    d = int(rng.integers(3, 16))
    if kind == "residual":
        model = nn.Sequential(_Residual(d, int(rng.integers(4, 17)), act()), nn.Linear(d, classes))
        return model, (d,)
    widths = [int(rng.integers(4, 25)) for _ in range(int(rng.integers(1, 4)))]
    layers: list[nn.Module] = []
    prev = d
    for w in widths:
        layers += [nn.Linear(prev, w), act()]
        prev = w
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers), (d,)


def _export(model: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *shape),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}},
        )
    return onnx.load_from_string(buf.getvalue())


def _boundary_points(model: nn.Module, x: torch.Tensor, rng: np.random.Generator, count: int) -> torch.Tensor:
    """Points at a chosen small distance from a decision boundary: bisection between two differently
    classified inputs, then a step of 1e-4 to 1e-1 of their distance back to the first one's side. The
    boundary is that close, so a certified radius far above the step is visibly wrong to the attack."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        out = []
        for _ in range(count * 4):
            i, j = (int(v) for v in rng.integers(len(x), size=2))
            if pred[i] == pred[j]:
                continue
            a, b = x[i].clone(), x[j].clone()  # a keeps pred[i]
            for _ in range(50):
                mid = (a + b) / 2
                if model(mid[None]).argmax(1)[0] == pred[i]:
                    a = mid
                else:
                    b = mid
            toward = x[i] - a
            step = float(rng.choice([1e-4, 1e-3, 1e-2, 1e-1])) * float((x[i] - x[j]).norm())
            p = a + toward / toward.norm().clamp_min(1e-30) * step
            if model(p[None]).argmax(1)[0] == pred[i]:
                out.append(p)
            if len(out) == count:
                break
        return torch.stack(out) if out else x[:0]


def generate(seed: int, n: int = 40) -> CertCase:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    kind = KINDS[seed % len(KINDS)]
    act_name = list(ACTIVATIONS)[int(rng.integers(len(ACTIVATIONS)))]
    model, shape = _build(rng, kind, act_name)
    model.eval()
    weight_scale = float(rng.choice([0.3, 1.0, 3.0, 100.0]))
    input_scale = float(rng.choice([0.01, 1.0, 100.0]))
    x = torch.randn(n, *shape) * input_scale
    _scale_weights(model, rng, weight_scale, x.reshape(n, -1) if kind != "cnn" else x[:0])
    x = torch.cat([x[: n // 2], _boundary_points(model, x, rng, n - n // 2)])
    return CertCase(
        seed, kind, act_name, weight_scale, input_scale, model, _export(model, shape), x.numpy().astype(np.float32)
    )


def _pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    radius: torch.Tensor,
    rng_seed: int,
    steps: int = 40,
    restarts: int = 2,
) -> list[torch.Tensor]:
    """Candidate adversarial points (one batch per restart) inside each sample's L2 ball."""
    gen = torch.Generator().manual_seed(rng_seed)
    shape = (-1,) + (1,) * (x.dim() - 1)
    r = radius.view(shape)
    out = []
    for _ in range(restarts):
        delta = torch.randn(x.shape, generator=gen)
        delta = delta / delta.flatten(1).norm(dim=1).view(shape).clamp_min(1e-30) * r
        for _ in range(steps):
            delta.requires_grad_(True)
            z = model(x + delta)
            other = z.detach().clone()
            other[torch.arange(len(x)), target] = -torch.inf
            runner_up = other.argmax(1)
            margin = z.gather(1, target.view(-1, 1)).squeeze(1) - z.gather(1, runner_up.view(-1, 1)).squeeze(1)
            (g,) = torch.autograd.grad(margin.sum(), delta)
            with torch.no_grad():
                g = g / g.flatten(1).norm(dim=1).view(shape).clamp_min(1e-30)
                delta = delta - 2.5 * r / steps * g
                norm = delta.flatten(1).norm(dim=1).view(shape)
                delta = delta * torch.clamp(r / norm.clamp_min(1e-30), max=1.0)
        out.append((x + delta).detach())
    return out


def attack(case: CertCase, radii: np.ndarray, factor: float = 0.999, sphere_points: int = 32) -> int:
    """How many samples with a positive radius ONNX Runtime classifies differently somewhere inside
    ``factor`` x their radius (PGD and random points on that sphere, each point checked by ONNX Runtime)."""
    run = runner(case.proto, backend="ort")
    idx = np.flatnonzero(radii > 0)
    if idx.size == 0:
        return 0
    x = case.x[idx]
    pred = run({"x": x})[0].argmax(1)
    r = (radii[idx] * factor).astype(np.float64)
    flipped = np.zeros(len(idx), dtype=bool)
    cands = _pgd(
        case.model, torch.from_numpy(x), torch.from_numpy(pred), torch.from_numpy(r.astype(np.float32)), case.seed
    )
    rng = np.random.default_rng(case.seed)
    for _ in range(sphere_points // 16):
        d = rng.standard_normal((16, *x.shape))
        d /= np.linalg.norm(d.reshape(16, len(x), -1), axis=2).reshape(16, len(x), *([1] * (x.ndim - 1)))
        cands += [torch.from_numpy(x + d[k] * r.reshape(-1, *([1] * (x.ndim - 1)))) for k in range(16)]
    for c in cands:
        xc = c.numpy().astype(np.float64)
        # keep the point inside the ball after float32 rounding of the offset
        off = xc - x
        norm = np.linalg.norm(off.reshape(len(x), -1), axis=1)
        shrink = np.minimum(1.0, r / np.maximum(norm, 1e-300)) * (1 - 1e-6)
        xc = (x + off * shrink.reshape(-1, *([1] * (x.ndim - 1)))).astype(np.float32)
        inside = np.linalg.norm((xc.astype(np.float64) - x).reshape(len(x), -1), axis=1) <= r
        flipped |= inside & (run({"x": xc})[0].argmax(1) != pred)
    return int(flipped.sum())


def certify_case(case: CertCase):
    return certify(case.proto, case.x, None, eps=[0.01, 0.1, 1.0], per_sample=True)
