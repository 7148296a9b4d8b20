"""Which ONNX Runtime execution providers to ask for, with what options, and what actually ran.

``--providers auto`` (the default) means: CUDA when it really works (a session is created with CUDA
first and a one-sample run succeeds on it), else the CPU with one warning line saying why. An explicit
list (``cuda``, ``cuda,cpu``) makes CUDA required: when it is missing or fails, lipgraph stops with a
clear error instead of certifying on a provider nobody asked for.

Precision. ONNX Runtime's CUDA provider runs float32 Gemm/MatMul/Conv in TF32 on Ampere and newer GPUs
by default (provider option ``use_tf32``, default 1): products are formed from operands rounded to 10
mantissa bits (unit roundoff 2^-11 instead of 2^-24; NVIDIA, "A100 Tensor Core GPU Architecture", 2020),
a relative error near 1e-3 in the logits, which a float32 allowance does not cover. lipgraph therefore
asks for ``use_tf32=0`` and for cuDNN's fixed implicit-GEMM convolution (``cudnn_conv_algo_search=
DEFAULT``): a plain float32 dot product per output, never an FFT or Winograd transform whose rounding
is not that of a dot product. ``precision="tf32"`` keeps TF32 on, and is only accepted when the float
error model can take TF32's operand rounding as a parameter (see :func:`tf32_operand_roundoff`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lipgraph.errors import LipgraphError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
AUTO = "auto"
PRECISIONS = ("fp32", "tf32")
TF32_UNIT_ROUNDOFF = 2.0**-11  # TF32 keeps 10 explicit mantissa bits

PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA,
    "gpu": CUDA,
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# Providers whose float32 arithmetic lipgraph knows how to pin down; others may use reduced precision
# (TensorRT builds FP16/TF32 engines, DirectML/CoreML may use FP16) and are refused for certification.
EXACT_FLOAT32 = (CPU, CUDA)


@dataclass(frozen=True)
class ProviderRequest:
    """What the user asked for: ORT provider names in order, and whether CUDA is only preferred."""

    names: tuple[str, ...]
    auto: bool = False

    @property
    def wants_cuda(self) -> bool:
        return CUDA in self.names


def ort_module():  # noqa: ANN201 - the onnxruntime module, imported lazily with a clear message
    try:
        import onnxruntime
    except ImportError:
        raise LipgraphError("onnxruntime is not installed; install lipgraph[cpu] (or lipgraph[gpu] for CUDA)") from None
    return onnxruntime


def parse_providers(spec: str | list[str] | tuple[str, ...] | ProviderRequest | None) -> ProviderRequest:
    """``None``/``""``/``"auto"`` -> CUDA if present else CPU (auto); ``"cuda,cpu"`` -> those, CUDA required."""
    if isinstance(spec, ProviderRequest):
        return spec
    ort = ort_module()
    available = list(ort.get_available_providers())
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", AUTO)):
        if CUDA in available:
            return ProviderRequest((CUDA, CPU), auto=True)
        return ProviderRequest((CPU,), auto=True)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name.lower() == AUTO:
            raise LipgraphError("--providers auto cannot be combined with other providers; give it alone")
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            if full == CUDA:
                raise LipgraphError(
                    f"CUDA was asked for (--providers {spec if isinstance(spec, str) else ','.join(spec)}) but this "
                    f"onnxruntime has no CUDA provider (available: {', '.join(available)}); install the GPU "
                    "build (lipgraph[gpu]) or use --providers auto to fall back to the CPU"
                )
            raise LipgraphError(
                f"execution provider '{name}' is not available in this onnxruntime (available: {', '.join(available)})"
            )
        if full not in EXACT_FLOAT32:
            raise LipgraphError(
                f"execution provider '{name}' may compute in reduced precision, which the certificate's float "
                "allowance does not cover; use cuda and/or cpu"
            )
        if full not in out:
            out.append(full)
    if not out:
        raise LipgraphError("--providers names no execution provider")
    return ProviderRequest(tuple(out), auto=False)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise LipgraphError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def tf32_operand_roundoff() -> float:
    """The operand roundoff to give the float error model for TF32, or a refusal when it has no such parameter.

    The float error bound must know that products inside Gemm/MatMul/Conv are formed from operands rounded
    to 2^-11; without that parameter TF32 is not covered by the allowance and certifying with it on would
    be unsound.
    """
    try:
        from lipgraph.floaterr import TF32_UNIT_ROUNDOFF as covered  # the per-sample float error bound
    except ImportError:
        raise LipgraphError(
            "--allow-tf32: TF32 arithmetic is not covered by the float allowance of this lipgraph version "
            "(it assumes float32 rounding); certify without --allow-tf32 (TF32 is then turned off)"
        ) from None
    return float(max(covered, TF32_UNIT_ROUNDOFF))


def ensure_precision_covered(precision: str, float_error: dict[str, Any] | None, tf32_roundoff: float) -> None:
    """Never report radii from TF32 logits unless the float error bound was computed with TF32's operand rounding
    (``float_error``: the certificate's description of the bound it used, None when it has none)."""
    if precision != "tf32":
        return
    used = float((float_error or {}).get("dot_operand_roundoff", 0.0))
    if not (tf32_roundoff > 0 and used >= tf32_roundoff):
        raise LipgraphError(
            "--allow-tf32: the logits were computed in TF32, which the float allowance used here does not cover; "
            "certify without --allow-tf32"
        )


DENORMAL_AS_ZERO = "session.set_denormal_as_zero"  # ONNX Runtime's session option that turns on FTZ + DAZ


def thread_flushes_subnormals() -> bool:
    """Whether this thread's float unit flushes float32 subnormal numbers: results to zero (FTZ) or operands read as
    zero (DAZ). The mode belongs to the thread, not to a session, and the threads it starts inherit it: when the first
    ONNX Runtime session of a process sets ``session.set_denormal_as_zero``, the creating thread keeps FTZ + DAZ for
    good (seen with ORT 1.32: a later plain CPU session there reads subnormal inputs and a subnormal Gemm ``alpha``
    as zero); ``torch.set_flush_denormal(True)`` and libraries built with ``-ffast-math`` set it too."""
    import numpy as np

    out = np.array([2.0**-127, 2.0**-126], dtype=np.float32) * np.array([4.0, 0.5], dtype=np.float32)
    return not (out[0] == np.float32(2.0**-125) and out[1] == np.float32(2.0**-127))


def subnormal_mode(session: Any) -> str:
    """How the float error model must treat numbers below float32's normal range for an ONNX Runtime session.

    "gradual" (IEEE 754's default) only for a CPU session without ``session.set_denormal_as_zero``; "flush" for
    anything else: CUDA kernels may be compiled with flush-to-zero and tensor-core GEMM/conv paths may read
    subnormal operands as zero, whatever ``use_tf32`` says (docs/floating-point.md, "Underflow"). The flush model
    bounds gradual underflow too, so it is never wrong to choose it."""
    providers = list(session.get_providers())
    if not providers or providers[0] != CPU or thread_flushes_subnormals():
        return "flush"
    with contextlib.suppress(Exception):  # ORT raises when the entry was never set
        if str(session.get_session_options().get_session_config_entry(DENORMAL_AS_ZERO)) == "1":
            return "flush"
    return "gradual"


def ensure_subnormals_covered(session: Any, float_error: dict[str, Any] | None) -> None:
    """Never report radii from logits of a session that may flush subnormals unless the float error bound did."""
    if subnormal_mode(session) == "flush" and (float_error or {}).get("subnormals") != "flush":
        raise LipgraphError(
            f"internal: the logits came from {session.get_providers()[0]}, which may flush subnormal numbers to "
            "zero, but the float allowance was computed for gradual underflow"
        )


def cuda_options(precision: str) -> dict[str, str]:
    """CUDA provider options for ``precision`` ("fp32": TF32 off; both: the fixed implicit-GEMM conv)."""
    return {
        "use_tf32": "1" if precision == "tf32" else "0",
        "cudnn_conv_algo_search": "DEFAULT",  # CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM, no search
    }


def with_options(names: tuple[str, ...], precision: str) -> list[str | tuple[str, dict[str, str]]]:
    """The ``providers`` argument of ``InferenceSession``: CUDA with its options, others by name."""
    return [(n, cuda_options(precision)) if n == CUDA else n for n in names]


def preload_cuda_libraries() -> None:
    """``onnxruntime.preload_dlls()`` where it exists (ORT >= 1.21): load CUDA 12 / cuDNN 9 from pip's nvidia-*
    packages. It prints to stdout on some failures, so stdout is kept clean around it."""
    ort = ort_module()
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with stdout_to_stderr(), contextlib.suppress(Exception):
        preload()


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send both Python's and the C-level stdout (fd 1) to stderr while native code may print banners.

    ONNX Runtime prints "EP Error" banners with ``print`` and CUDA/cuDNN libraries may write to fd 1;
    either would corrupt ``--format json`` on stdout. Nothing is lost: it goes to stderr.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    _flush_c_stdio()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (embedded interpreter): the Python-level redirect is all we can do
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _flush_c_stdio()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def device_name(provider: str, options: dict[str, dict[str, str]]) -> str | None:
    """A human name of the GPU a CUDA session runs on (None on the CPU): the device id from the session's
    provider options, its name from ``nvidia-smi`` or ONNX Runtime's device list when either answers."""
    if provider != CUDA:
        return None
    dev = str(options.get(CUDA, {}).get("device_id", "0"))
    name = _name_from_nvidia_smi(dev) or _name_from_ort(dev)
    return f"cuda:{dev} {name}" if name else f"cuda:{dev}"


def _name_from_ort(dev: str) -> str | None:
    """ONNX Runtime's own device list (ORT >= 1.22) names the GPU; used only when it lists one CUDA device,
    since its ids are PCI ids, not CUDA ordinals."""
    ort = ort_module()
    with contextlib.suppress(Exception):
        cuda = [d for d in ort.get_ep_devices() if d.ep_name == CUDA]
        if len(cuda) == 1 and dev == "0":
            meta = dict(cuda[0].device.metadata)
            for key in ("Description", "DeviceName", "Name"):
                if meta.get(key):
                    return str(meta[key])
    return None


def _name_from_nvidia_smi(dev: str) -> str | None:
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader", "-i", dev],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        return out.splitlines()[0].strip() if out else None
    return None
