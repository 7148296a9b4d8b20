"""Models built from the published 1-Lipschitz layer families, shared by the tests and the bench.

Interface (every family module follows it, so that tests and ``bench/lipschitz_families.py`` plug
in the same way): a module ``tests/families/<family>.py`` exposes ``MODELS: list[FamilyModel]``,
one entry per network (typically an MLP and a conv net). Each entry builds a small torch module in
eval mode with fixed, seeded weights, says the input shape to export with, and how to get the true
constant of the network it builds:

* ``true_constant(model) -> (lower, upper)``: an interval that contains the network's true L2
  Lipschitz constant, computed independently of lipgraph (exact dense-Jacobian SVD in float64 for
  linear nets, so ``lower == upper`` up to float noise; for nonlinear nets e.g. a power-iteration
  lower estimate on Jacobians at random inputs and the family's proven certificate as the upper end).
* ``certificate``: the constant the family proves for the network (1.0 for the 1-Lipschitz ones).

A test then asserts ``lower - noise <= bound <= 1.01 * upper`` for both torch exporters.
:func:`all_models` gathers every family module that exists (modules are added independently).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Family modules in the order of the bench table. A module that is not there yet is skipped.
FAMILY_MODULES = (
    "aol", "bcop", "cayley", "lot", "aoc", "sandwich", "liresnet", "torchlip", "circular",
    "soc", "cpl", "sll", "lbdn",
)  # fmt: skip


@dataclass(frozen=True)
class FamilyModel:
    family: str  # e.g. "Cayley (Trockman & Kolter 2021)"
    name: str  # "mlp", "conv", ...
    build: Callable[[], object]  # -> torch.nn.Module in eval mode, deterministic weights
    input_shape: tuple[int, ...]  # with batch 1, e.g. (1, 3, 8, 8)
    true_constant: Callable[[object], tuple[float, float]]  # model -> (lower, upper) of the true L
    certificate: float = 1.0  # what the family proves for this network
    slow: bool = False  # mark heavier models (export or oracle over ~2 s) for @pytest.mark.slow

    @property
    def key(self) -> str:
        return f"{self.family.split(' ')[0].lower()}-{self.name}"


def all_models() -> list[FamilyModel]:
    out: list[FamilyModel] = []
    for mod in FAMILY_MODULES:
        try:
            m = importlib.import_module(f"tests.families.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tests.families.{mod}":
                continue
            raise
        out.extend(m.MODELS)
    return out


# ------------------------------------------------------------------------------------------ helpers


def export_onnx(model, input_shape: tuple[int, ...], dynamo: bool):
    """Export as users do: legacy (opset 17) or dynamo (opset 18) exporter; returns the ModelProto."""
    import onnx
    import torch

    x = torch.randn(*input_shape)
    buf = io.BytesIO()
    if dynamo:
        prog = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=18,
            input_names=["x"],
            output_names=["logits"],
            verbose=False,
            optimize=True,
        )
        return prog.model_proto
    torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


def dense_jacobian_norm(model, input_shape: tuple[int, ...]) -> float:
    """Exact ``||J||_2`` of a LINEAR (affine) model: the dense Jacobian in float64, then an SVD."""
    import torch

    m64 = _float64_copy(model)
    x = torch.zeros(*input_shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: m64(t).reshape(-1), x)
    mat = jac.reshape(jac.shape[0], -1).numpy()
    return float(np.linalg.svd(mat, compute_uv=False)[0])


def jacobian_lower(model, input_shape: tuple[int, ...], samples: int = 8, seed: int = 0) -> float:
    """A LOWER estimate of the Lipschitz constant: the largest ``||J(x)||_2`` over random inputs.

    The Jacobian at each point is formed densely (small models) in float64 and its top singular value
    taken; never a bound, only the low end of the true constant's range.
    """
    import torch

    m64 = _float64_copy(model)
    gen = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(samples):
        x = torch.randn(*input_shape, generator=gen, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda t: m64(t).reshape(-1), x)
        mat = jac.reshape(jac.shape[0], -1).numpy()
        best = max(best, float(np.linalg.svd(mat, compute_uv=False)[0]))
    return best


def linear_truth(input_shape: tuple[int, ...]) -> Callable[[object], tuple[float, float]]:
    """``true_constant`` for a linear model: the exact dense norm at both ends of the range."""

    def fn(model) -> tuple[float, float]:
        v = dense_jacobian_norm(model, input_shape)
        return v, v

    return fn


def lower_and_certificate(input_shape: tuple[int, ...], certificate: float = 1.0, samples: int = 8):
    """``true_constant`` for a nonlinear model of a 1-Lipschitz family: (Jacobian lower estimate, proof)."""

    def fn(model) -> tuple[float, float]:
        return jacobian_lower(model, input_shape, samples=samples), certificate

    return fn


def _float64_copy(model):
    import copy

    m = copy.deepcopy(model).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
