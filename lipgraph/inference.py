"""ONNX Runtime over the model, with the logits (before a cut Softmax) as the only output.

The session runs a copy of the user's model whose graph output is the tensor the analyzer
certifies (``Analysis.logits_name``); a final Softmax is then dead code that ONNX Runtime drops.
Batches follow the model: a fixed batch dimension is honoured by padding the last batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from lipgraph.errors import LipgraphError

DEFAULT_BATCH_SIZE = 256


def _ort():  # noqa: ANN202 - the module, imported lazily with a clear message
    from lipgraph.providers import ort_module

    return ort_module()


def resolve_providers(spec: str | list[str] | None) -> list[str]:
    """``"cuda,cpu"`` -> ONNX Runtime provider names; None or "auto" -> CUDA when available, else CPU.

    Validation only: :class:`Runner` takes the spec itself (``auto`` keeps CUDA optional).
    """
    from lipgraph.providers import parse_providers

    return list(parse_providers(spec).names)


@dataclass
class ModelInput:
    name: str
    shape: tuple[int | None, ...]  # None: symbolic / unknown
    dtype: np.dtype


def model_input(model: onnx.ModelProto, input_name: str) -> ModelInput:
    """The declared shape and float type of the certified input."""
    for vi in model.graph.input:
        if vi.name != input_name:
            continue
        tt = vi.type.tensor_type
        dims = tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
        )
        return ModelInput(input_name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)))
    raise LipgraphError(f"the model has no input named '{input_name}'")


def logits_model(model: onnx.ModelProto, input_name: str, logits_name: str, elem_type: int | None) -> bytes:
    """A serialized copy of ``model`` whose only output is ``logits_name``."""
    inits = {i.name for i in model.graph.initializer}
    others = [i.name for i in model.graph.input if i.name not in inits and i.name != input_name]
    if others:
        raise LipgraphError(
            f"the model has other inputs besides '{input_name}' ({', '.join(others)}); "
            "lipgraph certify feeds only the certified input"
        )
    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = next((o for o in m.graph.output if o.name == logits_name), None)
    if existing is not None:
        keep = onnx.ValueInfoProto()
        keep.CopyFrom(existing)
    else:
        if not any(logits_name in n.output for n in m.graph.node):
            raise LipgraphError(
                f"the logits tensor '{logits_name}' is not produced by a node of the model file; "
                "export the model with the logits as its output"
            )
        keep = helper.make_tensor_value_info(logits_name, elem_type or onnx.TensorProto.FLOAT, None)
    del m.graph.output[:]
    m.graph.output.append(keep)
    return m.SerializeToString()


class CudaFailure(Exception):
    """The CUDA provider could not be used (session creation, a silent fallback, or a failed run)."""


class Runner:
    """A batched ONNX Runtime session over a logits model.

    ``providers``: a spec for :func:`lipgraph.providers.parse_providers` ("auto", "cuda,cpu", a list).
    With ``auto``, CUDA is used only when a session is created on it and a one-sample run works; any CUDA
    failure (there or later) reruns everything on the CPU and adds a line to :attr:`warnings`, so that
    :attr:`provider` always names the provider that computed every logit. An explicit CUDA request that
    cannot be met raises :class:`LipgraphError` instead. ``precision``: "fp32" (TF32 off) or "tf32".
    """

    def __init__(self, model_bytes: bytes, inp: ModelInput, output: str, providers: Any,
                 precision: str = "fp32"):
        from lipgraph.providers import check_precision, parse_providers, preload_cuda_libraries

        self.request = parse_providers(providers)
        self.precision_requested = check_precision(precision)
        self.input = inp
        self.output = output
        self.warnings: list[str] = []
        self._bytes = model_bytes
        self._probed = False
        if self.request.wants_cuda:
            if self.precision_requested == "fp32":
                # belt and braces beside use_tf32=0: NVIDIA's math libraries read this variable (documented with
                # cuBLAS) when they load, and then never use TF32 in this process
                os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
            preload_cuda_libraries()
            try:
                self.session = self._open(self.request.names)
                self._check_cuda_session()
            except CudaFailure as why:
                self._cuda_failed(str(why))
        else:
            self.session = self._open(self.request.names)

    # -- sessions ---------------------------------------------------------------------------------------
    def _open(self, names: tuple[str, ...]) -> Any:
        from lipgraph.providers import CUDA, stdout_to_stderr, with_options

        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, os.cpu_count() or 1)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        # Idle ORT workers sleep instead of spinning: the bound is computed in a thread beside them.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            # enable_fallback=0: ORT must not swap CUDA for the CPU behind our back (it would print an
            # "EP Error" banner on stdout and leave no trace in the report); lipgraph decides instead.
            with stdout_to_stderr():
                session = ort.InferenceSession(self._bytes, sess_options=so,
                                               providers=with_options(names, self.precision_requested),
                                               enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            msg = _first_line(exc)
            if CUDA in names:
                raise CudaFailure(f"ONNX Runtime could not create a CUDA session: {msg}") from None
            raise LipgraphError(f"ONNX Runtime cannot load the model: {msg}") from None
        with contextlib.suppress(Exception):
            session.disable_fallback()
        return session

    def _check_cuda_session(self) -> None:
        """CUDA really in the session, with TF32 set as asked (an old ORT silently ignores ``use_tf32``)."""
        from lipgraph.providers import CUDA

        used = list(self.session.get_providers())
        if CUDA not in used:
            raise CudaFailure(f"ONNX Runtime created the session on {', '.join(used)} without CUDA")
        opts = dict(self.session.get_provider_options().get(CUDA, {}))
        algo = str(opts.get("cudnn_conv_algo_search", "DEFAULT")).upper()
        if algo != "DEFAULT":  # a timed search may pick FFT/Winograd convolutions (not plain dot products)
            raise CudaFailure(f"this onnxruntime's CUDA provider reports cudnn_conv_algo_search={algo}, not DEFAULT")
        want = "1" if self.precision_requested == "tf32" else "0"
        if str(opts.get("use_tf32", "")) != want:
            raise CudaFailure(f"this onnxruntime's CUDA provider does not report use_tf32={want} "
                              f"(got {opts.get('use_tf32', 'no such option')}; onnxruntime-gpu >= 1.20 has it), "
                              "so float32 arithmetic cannot be guaranteed")

    def _cuda_failed(self, why: str) -> None:
        from lipgraph.providers import CPU

        if not self.request.auto:
            raise LipgraphError(f"CUDA was asked for but cannot be used: {why}; use --providers auto "
                                "to fall back to the CPU")
        self.warnings.append(f"CUDA is not usable ({why}); running on the CPU")
        self.session = self._open((CPU,))
        self._probed = True

    @property
    def provider(self) -> str:
        """The provider that ran (runs) the model: the session's first, after any fallback."""
        return str(self.session.get_providers()[0])

    @property
    def precision(self) -> str:
        from lipgraph.providers import CUDA

        return self.precision_requested if self.provider == CUDA else "fp32"

    def describe(self) -> dict[str, Any]:
        """For the report's ``meta``: provider actually used, device name (None on CPU), precision mode."""
        from lipgraph.providers import device_name

        opts = {k: dict(v) for k, v in self.session.get_provider_options().items()}
        return {"provider": self.provider, "providers_used": list(self.session.get_providers()),
                "device": device_name(self.provider, opts), "precision": self.precision}

    def _run_batch(self, xb: np.ndarray) -> np.ndarray:
        from lipgraph.providers import CUDA, stdout_to_stderr

        on_cuda = self.provider == CUDA
        try:
            with stdout_to_stderr() if on_cuda else contextlib.nullcontext():
                (out,) = self.session.run([self.output], {self.input.name: xb})
        except Exception as exc:  # noqa: BLE001
            if on_cuda:
                raise CudaFailure(f"a CUDA run failed: {_first_line(exc)}") from None
            raise
        if on_cuda and CUDA not in self.session.get_providers():
            raise CudaFailure("ONNX Runtime left CUDA during the run")
        return out

    def run(
        self,
        x: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Logits for every sample of ``x``, as float64 of shape (N, K) (K = 1 for a single logit)."""
        if batch_size < 1:
            raise LipgraphError(f"--batch-size must be at least 1, got {batch_size}")
        try:
            return self._run_all(x, batch_size, progress)
        except CudaFailure as why:
            self._cuda_failed(str(why))  # raises unless auto; then everything again, on the CPU
            return self._run_all(x, batch_size, progress)

    def _run_all(self, x: np.ndarray, batch_size: int, progress: Callable[[int, int], None] | None) -> np.ndarray:
        from lipgraph.providers import CUDA

        fixed = self.input.shape[0] if self.input.shape else None
        step = fixed if fixed is not None else batch_size
        n = len(x)
        if not self._probed and n and self.provider == CUDA:
            self._probed = True
            self._run_batch(self._pad(x[:1], fixed))  # the "tiny run": does CUDA really work? (else CudaFailure)
        chunks: list[np.ndarray] = []
        for start in range(0, n, step):
            xb = x[start:start + step]
            real = len(xb)
            xb = self._pad(xb, fixed)
            try:
                out = self._run_batch(xb)
            except CudaFailure:
                raise
            except Exception as exc:  # noqa: BLE001
                raise LipgraphError(
                    f"ONNX Runtime failed on samples {start}..{start + real - 1}: {_first_line(exc)}") from None
            out = np.asarray(out)
            if out.ndim == 0 or out.shape[0] != len(xb):
                raise LipgraphError(
                    f"the logits have shape {tuple(out.shape)} for a batch of {len(xb)}; "
                    "expected the batch on the first axis"
                )
            chunks.append(out[:real].reshape(real, -1))
            if progress is not None:
                progress(min(start + step, n), n)
        return np.concatenate(chunks).astype(np.float64, copy=False)

    @staticmethod
    def _pad(xb: np.ndarray, fixed: int | None) -> np.ndarray:
        if fixed is not None and len(xb) < fixed:
            pad = np.zeros((fixed - len(xb), *xb.shape[1:]), dtype=xb.dtype)
            return np.concatenate([xb, pad])
        return xb


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def stderr_progress(quiet: bool = False) -> Callable[[int, int], None] | None:
    """A progress bar on stderr (rate, ETA), only for a terminal and not in CI; see :mod:`lipgraph.progress`."""
    from lipgraph.progress import inference_progress

    return inference_progress(quiet)
