"""Float32 arithmetic of a GPU kernel in flush-to-zero + denormals-are-zero mode, emulated in numpy: every
operand, product and partial sum below the smallest normal number (2^-126) reads as zero."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lipgraph.providers import CPU, CUDA

TAU = np.float32(2.0**-126)


def ftz(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return np.where(np.abs(v) < TAU, np.float32(0.0), v)


def gemm_ftz_daz(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``x @ w.T + b`` in float32, every operand, product and partial sum below tau flushed to zero."""
    x, w = ftz(x), ftz(w)
    acc = np.zeros((x.shape[0], w.shape[0]), np.float32)
    for k in range(x.shape[1]):
        acc = ftz(acc + ftz(x[:, k : k + 1] * w[None, :, k]))
    return acc if b is None else ftz(acc + ftz(b)[None])


class CudaSessionStub:
    """An ONNX Runtime session as certify sees it on a GPU: it reports the CUDA provider (so the flush float model
    is selected) and computes its output with ``fn`` (e.g. an FTZ + DAZ emulation of the model)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn

    def get_providers(self) -> list[str]:
        return [CUDA, CPU]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: {"use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT", "device_id": "0"}, CPU: {}}

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        del outputs
        return [self.fn(next(iter(feeds.values())))]
