"""A stand-in for onnxruntime-gpu on a machine without a GPU: the real CPU runtime does the arithmetic,
and the CUDA provider's behaviours that matter to lipgraph are scripted.

Modes (what happens when a session asks for CUDA):
* ``works``: a session that reports CUDA (and the options it was given) and computes on the CPU;
* ``create_fails``: creation prints an "EP Error" banner on stdout, both from Python and on fd 1 (as native
  code does), then raises, as onnxruntime-gpu does without a driver;
* ``silent``: creation quietly yields a CPU-only session (ORT's own fallback);
* ``run_fails``: runs fail after ``fail_after`` successful ones (a CUDA error mid-run);
* ``old_ort``: the session ignores ``use_tf32`` (an onnxruntime-gpu older than the option);
* ``conv_search``: the session reports a timed cuDNN algorithm search instead of the fixed algorithm.
With ``use_tf32=1`` the fake CUDA session perturbs the logits as TF32 may: the top logit up and the
others down by ``tf32_rel * max|logit|`` (TF32 rounds operands to 2^-11, so ~1e-3 relative is typical).
"""

from __future__ import annotations

import os
import types
from typing import Any

import numpy as np
import onnxruntime as real_ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class FakeCudaSession:
    def __init__(self, inner: Any, options: dict[str, str], fake: FakeOrt):
        self._inner, self._fake = inner, fake
        self._options = {"device_id": "0", **options}
        if fake.mode == "old_ort":
            self._options.pop("use_tf32", None)
        if fake.mode == "conv_search":
            self._options["cudnn_conv_algo_search"] = "EXHAUSTIVE"
        self._providers = [CUDA, CPU]

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return {CUDA: dict(self._options), CPU: {}}

    def disable_fallback(self) -> None:
        self._fake.fallback_disabled = True

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._fake.cuda_runs += 1
        if self._fake.mode == "run_fails" and self._fake.cuda_runs > self._fake.fail_after:
            raise RuntimeError("CUDA failure 700: an illegal memory access was encountered")
        (out,) = self._inner.run(outputs, feed)
        if self._options.get("use_tf32") == "1":
            out = tf32_like(out, self._fake.tf32_rel)
        return [out]


def tf32_like(logits: np.ndarray, rel: float) -> np.ndarray:
    """The worst case of a relative error ``rel``: the predicted logit up, every other one down."""
    f = np.asarray(logits, dtype=np.float64)
    scale = rel * np.max(np.abs(f), axis=1, keepdims=True)
    top = np.argmax(f, axis=1)
    sign = -np.ones_like(f)
    sign[np.arange(len(f)), top] = 1.0
    return (f + sign * scale).astype(logits.dtype)


class FakeOrt(types.SimpleNamespace):
    def __init__(self, mode: str = "works", fail_after: int = 0, tf32_rel: float = 1e-3):
        super().__init__()
        self.mode, self.fail_after, self.tf32_rel = mode, fail_after, tf32_rel
        self.cuda_runs = 0
        self.preloaded = False
        self.fallback_disabled = False
        self.cuda_options: dict[str, str] | None = None
        self.kwargs: dict[str, Any] = {}
        self.SessionOptions = real_ort.SessionOptions
        self.ExecutionMode = real_ort.ExecutionMode
        self.GraphOptimizationLevel = real_ort.GraphOptimizationLevel

    def get_available_providers(self) -> list[str]:
        return [CUDA, CPU]

    def preload_dlls(self) -> None:
        self.preloaded = True
        print("preload_dlls banner on stdout")

    def get_ep_devices(self) -> list[Any]:
        return []

    def InferenceSession(self, model: bytes, sess_options: Any = None, providers: Any = None, **kw: Any) -> Any:  # noqa: N802
        self.kwargs = kw
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        inner = real_ort.InferenceSession(model, sess_options=sess_options, providers=[CPU])
        if CUDA not in names:
            return inner
        self.cuda_options = dict(next(p[1] for p in providers if isinstance(p, tuple) and p[0] == CUDA))
        if self.mode == "create_fails":
            print("*************** EP Error ***************")
            os.write(1, b"EP Error from native code\n")
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected ; GPU=0")
        if self.mode == "silent":
            return inner
        return FakeCudaSession(inner, self.cuda_options, self)


def install(monkeypatch: Any, fake: FakeOrt) -> FakeOrt:
    import lipgraph.providers

    monkeypatch.setattr(lipgraph.providers, "ort_module", lambda: fake)
    return fake
