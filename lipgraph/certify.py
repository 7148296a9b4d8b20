"""Certify a model on a dataset: run it with ONNX Runtime, bound it (in the background), bound its
float error, and turn the margins into certified radii (:mod:`lipgraph.radii`, docs/certificate.md) and
the report's metrics (:class:`Certificate`).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx

# Re-exported: scripts and tests name the radii and the certificate through the certify module.
from lipgraph.certificate import Certificate as Certificate
from lipgraph.certificate import eps_key as eps_key
from lipgraph.errors import DataError, LipgraphError
from lipgraph.radii import MARGIN_REL as MARGIN_REL
from lipgraph.radii import Radii as Radii
from lipgraph.radii import compute_radii as compute_radii

DEFAULT_EPS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)


def _input_norms(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``||x_i||_2`` per sample in float64 (chunked: no float64 copy of the whole data)."""
    n = len(x)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        xb = np.asarray(x[start:start + chunk]).reshape(min(chunk, n - start), -1)
        out[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", xb, xb, dtype=np.float64))  # float64 sums
    return out


def _check_eps(eps: Iterable[float] | float) -> list[float]:
    if isinstance(eps, int | float | np.number):  # a single radius is as natural as a list of them
        eps = [float(eps)]
    vals: list[float] = []
    for e in eps:
        try:
            v = float(e)
        except (TypeError, ValueError):
            raise LipgraphError(f"eps '{e}' is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise LipgraphError(f"eps must be a finite number >= 0, got {e}")
        if v not in vals:
            vals.append(v)
    return sorted(vals)


def _logits_choice(graph: Any) -> tuple[str, str | None, list[str]]:
    """The tensor to run and certify, from the canonical graph's structure (docs/certificate.md).

    Returns ``(tensor, sigmoid_logit, warnings)``: a final Sigmoid on a single logit is recognised
    (``sigmoid_logit`` is then the logit ``z``, class 1 iff ``z > 0``, and its own bound is used);
    ArgMax-like endings are refused.
    """
    name = graph.output_name
    shape = graph.shape_of(name)
    if shape is not None and len(shape) >= 2 and all(d is not None for d in shape[1:]):
        dims = [int(d) for d in shape[1:]]  # type: ignore[arg-type]
        if int(np.prod(dims)) != max(dims):
            raise LipgraphError(
                f"the output '{name}' has per-sample shape {tuple(dims)}; lipgraph certifies classifiers "
                "with one vector of logits per sample"
            )
    prod = graph.producer(name)
    if prod is not None and prod.domain == "ai.onnx" and prod.op_type in {"ArgMax", "ArgMin", "TopK", "Hardmax"}:
        raise LipgraphError(f"the model ends in {prod.op_type}; export it with the logits as the output")
    if (prod is not None and prod.domain == "ai.onnx" and prod.op_type == "Sigmoid" and shape is not None
            and all(d == 1 for d in shape[1:]) and graph.is_variable(prod.inputs[0])):
        z = prod.inputs[0]
        return z, z, [f"final Sigmoid on a single logit: certifying the logit '{z}' (class 1 iff > 0)"]
    return name, None, []


def _blas_single_thread() -> contextlib.AbstractContextManager[Any]:
    """One BLAS thread for the bound while ONNX Runtime holds the cores.

    Multi-threaded OpenBLAS beside ORT's busy workers is pathological: on a 2-core machine the
    conv/dense SVDs of a small CNN took 4 s instead of 0.35 s (measured). Process-global while active.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class _Background:
    """The bound, computed in a daemon thread while ONNX Runtime runs (both release the GIL).

    A daemon thread, so that an error in the main thread (bad data) exits at once.
    """

    def __init__(self, fn: Callable[[], Any]):
        self._result: Any = None
        self._error: BaseException | None = None
        self._done = threading.Event()

        def work() -> None:
            try:
                with _blas_single_thread():
                    self._result = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self._error = exc
            finally:
                self._done.set()

        threading.Thread(target=work, name="lipgraph-bound", daemon=True).start()

    def failed(self) -> BaseException | None:
        return self._error if self._done.is_set() else None

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._result


def certify(
    model: str | os.PathLike[str] | onnx.ModelProto,
    x: np.ndarray,
    y: np.ndarray | None = None,
    eps: Iterable[float] | float = DEFAULT_EPS,
    *,
    input_name: str | None = None,
    batch_size: int | None = None,
    providers: str | list[str] | None = None,
    per_sample: bool = False,
    progress: Callable[[int, int], None] | None = None,
    analysis: Any = None,
    source: str = "data",
    precision: str = "fp32",
    unit_roundoff: float | None = None,
    dot_operand_roundoff: float = 0.0,
    tight_pairs: str | float | None = "auto",
    local_bounds: str = "auto",
    radius_steps: int | None = None,
) -> Certificate:
    """Certify ``model`` on inputs ``x`` (N, ...) with optional labels ``y`` (N,).

    Returns a :class:`Certificate` with clean and certified accuracy at every ``eps`` (one L2 radius,
    or several, in the model's input space). Raises :class:`~lipgraph.errors.LipgraphError` (``DataError`` for
    data that does not fit the model) with a one-line message. Without a precomputed ``analysis``,
    the bound is computed in a background thread while ONNX Runtime runs. ``providers``: "auto" (default:
    CUDA when it works, else CPU) or a list (CUDA then required); ``precision``: "fp32" (TF32 off on CUDA)
    or "tf32" (products with TF32's 10-bit operands, covered by the float error model).
    ``unit_roundoff`` (default float32's 2^-24) and ``dot_operand_roundoff`` (2^-11 for TF32 products)
    set the float error model.
    ``tight_pairs`` (``"auto"``, ``"off"`` or seconds) selects per-class-pair network bounds
    (``lipgraph.pairs``). ``local_bounds`` (``"auto"``, ``"all"`` or ``"off"``) checks the eps grid per sample with
    linear bound propagation on chains of affine layers and ReLU-like activations (``lipgraph.local_bounds``);
    ``radius_steps`` more bounds per sample refine its radius between grid values (None: the default, 0: none).
    """
    from lipgraph.analyze import analyze
    from lipgraph.chain import unfused_graph
    from lipgraph.data import fit_inputs, fit_labels
    from lipgraph.floaterr import FLOAT32_UNIT_ROUNDOFF, float_error_model
    from lipgraph.floaterr.chain_sample import chain_float
    from lipgraph.graph_build import build_graph
    from lipgraph.inference import DEFAULT_BATCH_SIZE, Runner, logits_model, model_input, resolve_providers
    from lipgraph.loader import load_model
    from lipgraph.local_bounds import local_candidates, parse_local_mode
    from lipgraph.pairs import pair_candidates, parse_mode
    from lipgraph.passes import run_passes
    from lipgraph.providers import (
        check_precision,
        ensure_precision_covered,
        ensure_subnormals_covered,
        parse_providers,
        subnormal_mode,
        tf32_operand_roundoff,
        thread_flushes_subnormals,
    )
    from lipgraph.rules import load_rules
    from lipgraph.tail import find_tail

    t_start = time.perf_counter()
    eps_list = _check_eps(eps)
    try:
        parse_mode(tight_pairs)
        local_mode = parse_local_mode(local_bounds)
    except ValueError as exc:
        raise LipgraphError(str(exc)) from None
    if thread_flushes_subnormals():
        # lipgraph's own float64 analysis would read subnormal inputs, constants and attributes as zero too: the
        # network and the points it bounds would not be the ones ONNX Runtime is given
        raise LipgraphError(
            "this thread flushes subnormal floats to zero (set by an ONNX Runtime session with "
            "session.set_denormal_as_zero, torch.set_flush_denormal(True) or a library built with -ffast-math); "
            "certify in a process that does not set it"
        )
    prov = resolve_providers(providers)
    request = parse_providers(providers)
    tf32_roundoff = tf32_operand_roundoff() if check_precision(precision) == "tf32" else 0.0
    from lipgraph.stream import is_streamed

    streamed = is_streamed(x)  # a lipgraph.stream view: read batch by batch, never whole
    if not streamed:
        x = np.asarray(x)
    if x.dtype == object:
        raise DataError(f"{source}: inputs are an object array; lipgraph needs a numeric array")
    background: _Background | None = None
    file_meta: dict[str, Any] = {}
    if analysis is None:
        if isinstance(model, onnx.ModelProto):
            proto = model
        else:
            proto, sha = load_model(model)
            file_meta = {"model": str(model), "model_sha256": sha}
        # The canonical graph's structure (cheap: no norms) names the logits tensor to run.
        graph = build_graph(proto, input_name)
        run_passes(graph)
    else:
        graph = analysis.graph
        proto = graph.model
        if proto is None:
            raise LipgraphError("the analysis holds no model to run")
    logits_name, sigmoid_logit, warns = _logits_choice(graph)
    inp = model_input(proto, graph.input_name)
    if inp.dtype.kind != "f":
        raise LipgraphError(f"the model input '{inp.name}' is not a float tensor")
    xf = x.fitted(inp.shape, inp.dtype, source) if streamed else fit_inputs(x, inp.shape, inp.dtype, source)
    elem = graph.tensors[logits_name].elem_type if logits_name in graph.tensors else None
    runner = Runner(logits_model(proto, inp.name, logits_name, elem), inp, logits_name, request, precision)
    # TF32 rounds each product operand to 10 mantissa bits: the error model must know it.
    dot_operand_roundoff = max(dot_operand_roundoff, tf32_roundoff)
    u = FLOAT32_UNIT_ROUNDOFF if unit_roundoff is None else float(unit_roundoff)
    # a GPU session may flush subnormal results and operands to zero: the float model charges that (FTZ + DAZ);
    # a later fallback to the CPU keeps it (it bounds gradual underflow as well)
    subnormals = subnormal_mode(runner.session)
    sample_shape = (1, *xf.shape[1:])
    error_model = None
    if analysis is None:
        load_rules()  # imports happen here, not concurrently in the worker
        # Bound at the data's own size: symbolic dimensions become concrete (sound for these
        # inputs, and tighter: conv bounds on the exact grid instead of the LMT overlap bound).
        def bound_and_error() -> tuple[Any, Any, np.ndarray, Any, Any]:
            an = analyze(proto, input_name=graph.input_name, input_shape=sample_shape)
            ug = unfused_graph(proto, graph.input_name, sample_shape)  # read by the float bounds and the pairs
            em = float_error_model(proto, graph.input_name, sample_shape, logits_name, u, dot_operand_roundoff, an,
                                   graph=ug, subnormals=subnormals)
            return an, em, _input_norms(xf), chain_float(proto, graph.input_name, sample_shape, logits_name, xf, u,
                                                         dot_operand_roundoff, graph=ug, subnormals=subnormals), ug

        background = _Background(bound_and_error)

    def on_batch(done: int, total: int) -> None:
        if background is not None and (err := background.failed()) is not None:
            raise err  # the model has no sound bound: stop running it
        if progress is not None:
            progress(done, total)

    t_inf = time.perf_counter()
    logits = runner.run(xf, batch_size or DEFAULT_BATCH_SIZE, on_batch)
    t_inf = time.perf_counter() - t_inf
    n, k = logits.shape
    labels = fit_labels(y, n, max(k, 2), source)
    t_wait = time.perf_counter()
    if background is not None:
        analysis, error_model, input_norms, per_sample_err, unfused = background.result()
        analysis.meta.update(file_meta)
    else:
        unfused = unfused_graph(proto, graph.input_name, sample_shape)
        error_model = float_error_model(proto, graph.input_name, sample_shape, logits_name, u, dot_operand_roundoff,
                                        analysis, graph=unfused, subnormals=subnormals)
        input_norms = _input_norms(xf)
        per_sample_err = chain_float(proto, graph.input_name, sample_shape, logits_name, xf, u, dot_operand_roundoff,
                                     graph=unfused, subnormals=subnormals)
    t_wait = time.perf_counter() - t_wait
    if analysis.logits_name != graph.output_name:
        raise LipgraphError(f"internal: the analysis certifies '{analysis.logits_name}' but "
                            f"'{graph.output_name}' was run")
    if sigmoid_logit is not None:
        if sigmoid_logit not in analysis.tensor_bounds:
            raise LipgraphError(f"internal: no bound for the logit '{sigmoid_logit}' before the final Sigmoid")
        lipschitz = float(analysis.tensor_bounds[sigmoid_logit])
    else:
        lipschitz = float(analysis.bound)
    graph = analysis.graph

    t_radii = time.perf_counter()
    tails = find_tail(graph, logits_name, analysis.tensor_bounds)
    extra, pair_meta = ([], {"used": False, "reason": "single logit"}) if sigmoid_logit is not None else \
        pair_candidates(graph, logits_name, logits, labels, lipschitz, tails, tight_pairs,
                        unfused_graph=lambda: unfused,
                        margin_rel=MARGIN_REL)
    radii = compute_radii(logits, labels, lipschitz, list(tails) + extra, error_model.at(input_norms), error_model.d,
                          per_sample_err.candidates())
    float_errors = [(error_model.at(input_norms), error_model.d), *[c[:2] for c in per_sample_err.candidates()]]
    local = local_candidates(local_mode, lambda: unfused, logits_name, xf, logits, radii.target, radii.correct,
                             radii.radius, eps_list, float_errors, MARGIN_REL, bisect_steps=radius_steps)
    # no certified ball may reach inputs where a float value could overflow (the error bounds assume none does)
    range_cap = error_model.radius_cap(input_norms)
    radii.radius = np.minimum(local.radius, range_cap)
    t_radii = time.perf_counter() - t_radii

    # at eps = 0 a correct sample counts even with radius 0: certified accuracy at 0 == clean accuracy
    cert_acc = {eps_key(e): float(np.mean(radii.correct & (radii.radius >= e))) for e in eps_list}
    clean = float(np.mean(radii.correct)) if labels is not None else None
    meta = dict(analysis.meta)
    meta.update({
        **runner.describe(),  # provider that actually ran, device name, precision mode
        "providers": prov,
        "batch_size": int(inp.shape[0]) if inp.shape and inp.shape[0] else int(batch_size or DEFAULT_BATCH_SIZE),
        "certified_tensor": logits_name,
        "data": {
            "source": source,
            "samples": int(n),
            "labels": labels is not None,
            "input_dtype": str(x.dtype),
            "input_min": float(np.min(xf)),
            "input_max": float(np.max(xf)),
        },
        "tail": (
            {"h": tails[-1].h, "l_h": tails[-1].l_h, "ops": tails[-1].ops, "candidates": len(tails)}
            if tails else None
        ),
        "pair_bounds": pair_meta,
        "local_bounds": local.meta,
        "float_allowance": (
            "margins reduced by twice a proven bound e(||x||) on the float32 logits' error "
            f"(floor {MARGIN_REL:g} * max|logit|); radii rounded down"
        ),
        "float_error": {**error_model.describe(), "max_over_samples": float(np.max(error_model.at(input_norms)))
                        if n else 0.0, "per_sample_chain": per_sample_err.describe(radii.float_error_choice),
                        "radii_capped_by_float_range": int(np.sum(local.radius > range_cap))},
        "time_inference_s": round(t_inf, 4),
        "time_bound_wait_s": round(t_wait, 4),  # the bound runs beside inference; this is what it added
        "time_radii_s": round(t_radii, 4),
        "time_total_s": round(time.perf_counter() - t_start, 4),
    })
    ensure_precision_covered(runner.precision, meta.get("float_error"), tf32_roundoff)
    ensure_subnormals_covered(runner.session, meta.get("float_error"))
    warns.extend(runner.warnings)
    if pair_meta.get("budget_exhausted"):
        warns.append("--tight-pairs: the time budget ran out; the remaining pairs keep their cheaper bounds")
    if pair_meta.get("work_capped"):
        warns.append("--tight-pairs auto: refined the pairs deciding most samples only; the others keep their "
                     "fast bounds (--tight-pairs SECONDS refines more)")
    if local.meta.get("over_work_cap"):
        warns.append(f"--local-bounds auto: not run ({local.meta.get('reason')}); --local-bounds all runs it")
    if labels is None:
        warns.append("no labels in the data: certifying the model's own predictions")
    if x.dtype.kind in "iu" and meta["data"]["input_max"] > 1.5:
        # DESIGN: no silent rescaling. Say so, since a model trained on [0, 1] then sees other data.
        warns.append(f"integer inputs ({x.dtype}, up to {meta['data']['input_max']:g}) are used as-is, "
                     "not rescaled; radii are in these units")
    return Certificate(
        lipschitz_bound=lipschitz,
        samples=int(n),
        clean_accuracy=clean,
        certified_accuracy=cert_acc,
        median_radius=float(np.median(radii.radius)),
        mean_radius=float(np.mean(radii.radius)),
        radius_method=radii.method,
        nodes=[nd.to_json() for nd in analysis.nodes],
        meta=meta,
        eps=eps_list,
        radii=radii.radius,
        predictions=radii.prediction,
        labels=labels,
        correct=radii.correct,
        warnings=list(analysis.warnings) + warns,
        per_sample=per_sample,
        sample_methods=np.where(local.from_local, local.meta.get("method", "").split(":")[0], radii.method)
        if local.meta.get("used") else None,
    )
