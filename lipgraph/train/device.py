"""Where the trainer runs: ``--device auto|cpu|cuda``, float32 arithmetic on the GPU, the DDP backend.

The Lipschitz machinery (Björck orthonormalisation, power iteration, the LMT guard) is float32 on every
device: no autocast / AMP, and TF32 is turned off for cuBLAS matmuls and cuDNN convolutions, which PyTorch
would otherwise allow for convolutions by default on Ampere and newer GPUs. The export is computed on the
CPU in float64 (``lipgraph.train.export``), so the ONNX file does not depend on where training ran beyond
the trained weights themselves.
"""

from __future__ import annotations

import os
import warnings

import torch

from lipgraph.errors import LipgraphError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str) -> torch.device:
    """``auto``: CUDA when PyTorch sees a GPU, else the CPU; ``cuda`` without one is an error.

    Under ``torchrun`` each process takes the GPU of its ``LOCAL_RANK``.
    """
    name = (spec or "auto").strip().lower()
    if name not in DEVICES:
        raise LipgraphError(f"unknown --device {spec!r}; choose one of {', '.join(DEVICES)}")
    has_cuda = bool(torch.cuda.is_available())
    if name == "cuda" and not has_cuda:
        why = "this PyTorch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise LipgraphError(f"--device cuda: PyTorch cannot use a GPU here ({why}); use --device auto or cpu")
    if name == "cpu" or (name == "auto" and not has_cuda):
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local % max(1, torch.cuda.device_count()))


def exact_float32(device: torch.device) -> None:
    """No TF32 in matmuls or convolutions on a GPU (process-wide; PyTorch has no per-module switch)."""
    if device.type != "cuda":
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer PyTorch prefers the fp32_precision API and says so
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(device)


def dist_backend(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"
