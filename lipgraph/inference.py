"""ONNX Runtime over the model, with the logits (before a cut Softmax) as the only output.

The session runs a copy of the user's model whose graph output is the tensor the analyzer
certifies (``Analysis.logits_name``); a final Softmax is then dead code that ONNX Runtime drops.
Batches follow the model: a fixed batch dimension is honoured by padding the last batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from lipgraph.errors import LipgraphError

DEFAULT_BATCH_SIZE = 256

_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def _ort():  # noqa: ANN202 - the module, imported lazily with a clear message
    try:
        import onnxruntime
    except ImportError:
        raise LipgraphError(
            "onnxruntime is not installed; install lipgraph[cpu] (or lipgraph[gpu] for CUDA)"
        ) from None
    return onnxruntime


def resolve_providers(spec: str | list[str] | None) -> list[str]:
    """``"cuda,cpu"`` -> ONNX Runtime provider names; None -> CUDA when available, else CPU."""
    ort = _ort()
    available = list(ort.get_available_providers())
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        full = _PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise LipgraphError(
                f"execution provider '{name}' is not available in this onnxruntime "
                f"(available: {', '.join(available)})"
            )
        if full not in out:
            out.append(full)
    if not out:
        raise LipgraphError("--providers names no execution provider")
    return out


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


class Runner:
    """A batched ONNX Runtime session over a logits model."""

    def __init__(self, model_bytes: bytes, inp: ModelInput, output: str, providers: list[str]):
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
            self.session = ort.InferenceSession(model_bytes, sess_options=so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise LipgraphError(f"ONNX Runtime cannot load the model: {msg}") from None
        self.input = inp
        self.output = output
        self.provider = self.session.get_providers()[0]

    def run(
        self,
        x: np.ndarray,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Logits for every sample of ``x``, as float64 of shape (N, K) (K = 1 for a single logit)."""
        if batch_size < 1:
            raise LipgraphError(f"--batch-size must be at least 1, got {batch_size}")
        fixed = self.input.shape[0] if self.input.shape else None
        step = fixed if fixed is not None else batch_size
        n = len(x)
        chunks: list[np.ndarray] = []
        for start in range(0, n, step):
            xb = x[start:start + step]
            real = len(xb)
            if fixed is not None and real < fixed:
                pad = np.zeros((fixed - real, *xb.shape[1:]), dtype=xb.dtype)
                xb = np.concatenate([xb, pad])
            try:
                (out,) = self.session.run([self.output], {self.input.name: xb})
            except Exception as exc:  # noqa: BLE001
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LipgraphError(f"ONNX Runtime failed on samples {start}..{start + real - 1}: {msg}") from None
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


def stderr_progress(quiet: bool = False) -> Callable[[int, int], None] | None:
    """A progress bar on stderr (rate, ETA), only for a terminal and not in CI; see :mod:`lipgraph.progress`."""
    from lipgraph.progress import inference_progress

    return inference_progress(quiet)
