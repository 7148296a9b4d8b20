"""Models built from the published 1-Lipschitz layer families, for tightness and soundness tests.

Each family module (``soc``, ``cpl``, ``sll``, ``lbdn``, ...) exposes ``BUILDERS``: a list of
zero-argument callables, each returning a :class:`FamilyModel` (an eval-mode float32 torch module,
its batch-1 input shape, and what is known of its true L2 Lipschitz constant). The layers are short
implementations written from the papers, not copies of the authors' code.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch


@dataclass
class FamilyModel:
    name: str
    module: torch.nn.Module
    input_shape: tuple[int, ...]
    # Exact true constant where it is computable (linear nets: dense Jacobian SVD), else None.
    true_constant: float | None = None
    # The family's own certificate (1 for the 1-Lipschitz families), an upper bound of the truth.
    certificate: float | None = None
    linear: bool = False
    # A lower estimate of the truth (max Jacobian norm at random inputs), where the truth is unknown.
    lower: float | None = None


Builder = Callable[[], FamilyModel]


def export(model: torch.nn.Module, input_shape: tuple[int, ...], dynamo: bool) -> onnx.ModelProto:
    """Export with one of torch's two ONNX exporters (as a user deploys the model)."""
    x = torch.zeros(input_shape)
    if dynamo:
        prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
        return prog.model_proto
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    return onnx.load_from_string(buf.getvalue())


def dense_jacobian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """The Jacobian of ``fn`` at ``x`` (batch 1) as a float64 matrix (outputs x inputs)."""
    xd = x.detach().to(torch.float64).requires_grad_(True)
    jac = torch.autograd.functional.jacobian(lambda z: fn(z).reshape(-1), xd)
    return jac.reshape(-1, x.numel()).numpy()


def top_singular_value(m: np.ndarray) -> float:
    return float(np.linalg.svd(np.asarray(m, dtype=np.float64), compute_uv=False)[0])


def jacobian_lower_estimate(
    module: torch.nn.Module, input_shape: tuple[int, ...], samples: int = 8, seed: int = 0
) -> float:
    """max ||J(x)||_2 over random inputs: a lower estimate of the true constant (never a bound)."""
    gen = torch.Generator().manual_seed(seed)
    m64 = _as_float64(module)
    best = 0.0
    for _ in range(samples):
        x = torch.randn(input_shape, generator=gen, dtype=torch.float64)
        best = max(best, top_singular_value(dense_jacobian(m64, x)))
    return best


def _as_float64(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(torch.float64).eval()
