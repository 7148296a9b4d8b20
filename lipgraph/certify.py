"""Margins -> certified radii -> metrics (docs/certificate.md, docs/floating-point.md).

For a sample with target class ``t`` (its label, or the prediction when there are no labels):

* global radius ``(F_t - max_{i != t} F_i - delta) / (sqrt(2) L)``;
* pairwise radius ``min_{i != t} (F_t - F_i - delta) / (||a_t - a_i||_2 L_h)`` for every split
  point of the affine tail (``lipgraph.tail``);
* a single logit ``z`` (class 1 iff ``z > 0``): ``(|z| - delta) / L``, or ``/ (||a|| L_h)``.

The reported radius is the largest of these sound radii, 0 when the prediction is wrong.
Float allowance: ``delta`` per sample comes from a proven bound ``e(||x||)`` on the distance between
ONNX Runtime's float32 logits and the real-arithmetic network's (``lipgraph.floaterr``, derived in
docs/floating-point.md), charged twice so that the radius holds for the real network and for ONNX
Runtime's own outputs; ``1e-5 * max_j |F_j|`` stays as a floor. Norms and bounds are upper bounds
(rounding included), and every radius is rounded down. Ties: only ``i = t`` is excluded from the
max, so a tie gives radius 0.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lipgraph.errors import DataError, LipgraphError

DEFAULT_EPS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
MARGIN_REL = 1e-5  # docs/floating-point.md: margins are reduced by at least this times max|logit|
_EPS64 = float(2.0**-53)
_SQRT2_UP = float(np.nextafter(math.sqrt(2.0), math.inf))


def _input_norms(x: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``||x_i||_2`` per sample in float64 (chunked: no float64 copy of the whole data)."""
    n = len(x)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        xb = np.asarray(x[start:start + chunk]).reshape(min(chunk, n - start), -1)
        out[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", xb, xb, dtype=np.float64))  # float64 sums
    return out


def eps_key(e: float) -> str:
    """The JSON key of a radius: ``str(float)`` ("0.5", "1.0", "1e-05")."""
    return str(float(e))


@dataclass
class Radii:
    radius: np.ndarray  # the reported radius per sample (0 when misclassified)
    global_radius: np.ndarray
    pairwise_radius: np.ndarray | None  # best pairwise radius per sample, None when no tail
    prediction: np.ndarray
    target: np.ndarray  # label, or the prediction when there are no labels
    correct: np.ndarray
    method: str  # "pairwise" or "global"
    float_error_choice: np.ndarray | None = None  # per sample: which (e, d) candidate set the margin reduction


def _round_down(r: np.ndarray) -> np.ndarray:
    """Absorb the few float64 roundings of a quotient, then step one ulp towards zero."""
    out = np.nextafter(r * (1.0 - 16.0 * _EPS64), 0.0)
    return np.maximum(out, 0.0)


def compute_radii(logits: np.ndarray, labels: np.ndarray | None, lipschitz: float,
                  tails: Sequence[Any] = (), float_error: np.ndarray | None = None,
                  float_error_slope: float = 0.0,
                  extra_float_errors: Sequence[tuple[Any, ...]] = ()) -> Radii:
    """Certified radii for ``logits`` (N, K) given the network bound and optional tail candidates.

    ``float_error`` (N,): a bound ``e`` on ``||logits - real logits||_2`` per sample, and
    ``float_error_slope`` the bound's growth ``d`` per unit of input norm (``e(s) = c + d s``).
    A logit difference moves by at most ``sqrt(2) e`` (one logit: ``e``). The margins are reduced
    by that at x (so the real network's margin at x is positive) and by the error anywhere within
    the radius r, ``e(s + r) <= e(s) + d r0`` with ``r0 >= r`` the radius with ``2 sqrt(2) e(s)``
    taken off (so ONNX Runtime's float margin is positive there too).
    ``extra_float_errors``: more sound ``(e per sample, d)`` pairs, or ``(e, d, e_x)`` with ``e_x <= e`` a
    bound valid at x only (``e_x + e`` then replaces ``2 e``: the first term speaks of x, the second of the
    ball). Each candidate gives its own reduction ``delta_c`` and the smallest is used per sample. The
    radius r computed with ``delta = delta_c`` is at most that candidate's ``r0`` (radii shrink as delta
    grows, and ``r0`` used ``sqrt(2) (e_c + e_x_c) <= delta_c``), so the argument above holds with the
    chosen candidate.
    """
    f = np.asarray(logits, dtype=np.float64)
    floor = MARGIN_REL * np.max(np.abs(f), axis=1) if f.ndim == 2 and f.size else np.zeros(len(f))
    if float_error is None:
        return _radii(f, labels, lipschitz, tails, floor)
    mult = 1.0 if f.ndim == 2 and f.shape[1] == 1 else _SQRT2_UP
    deltas = np.stack([_float_delta(f, labels, lipschitz, tails, floor, mult, *cand)
                       for cand in [(float_error, float_error_slope), *extra_float_errors]])
    radii = _radii(f, labels, lipschitz, tails, np.min(deltas, axis=0))
    radii.float_error_choice = np.argmin(deltas, axis=0)
    return radii


def _float_delta(f: np.ndarray, labels: np.ndarray | None, lipschitz: float, tails: Sequence[Any],
                 floor: np.ndarray, mult: float, float_error: np.ndarray, slope: float,
                 error_at_x: np.ndarray | None = None) -> np.ndarray:
    """The margin reduction of one ``(e, d[, e_x])`` candidate (see :func:`compute_radii`)."""
    err = np.asarray(float_error, dtype=np.float64)
    both = 2.0 * err if error_at_x is None else np.nextafter(err + np.asarray(error_at_x, dtype=np.float64), np.inf)
    base = np.maximum(both * mult, floor)
    if slope <= 0:
        return base
    r0 = _radii(f, labels, lipschitz, tails, base).radius
    return np.maximum(np.nextafter((both + slope * r0) * mult * (1.0 + 4 * _EPS64), np.inf), floor)


def _radii(f: np.ndarray, labels: np.ndarray | None, lipschitz: float, tails: Sequence[Any],
           delta: np.ndarray) -> Radii:
    if f.ndim != 2 or f.shape[1] < 1:
        raise LipgraphError(f"the logits have shape {f.shape}; expected (samples, classes)")
    n, k = f.shape
    if not np.all(np.isfinite(f)):
        bad = int(np.flatnonzero(~np.isfinite(f).all(axis=1))[0])
        raise LipgraphError(f"the model produced NaN or Inf logits (first at sample {bad}); check the inputs")
    if not (lipschitz >= 0):
        raise LipgraphError(f"the Lipschitz bound is {lipschitz}; cannot certify")
    rows = np.arange(n)
    if k == 1:
        z = f[:, 0]
        pred = (z > 0).astype(np.int64)
        target = pred if labels is None else labels
        signed = np.where(target == 1, z, -z)
        usable = np.maximum(signed - delta, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            glob = _round_down(np.where(usable > 0, usable / lipschitz, 0.0))
            pair = None
            for cand in tails:
                den = float(cand.row_norms()[0]) * cand.l_h * (1.0 + 4 * _EPS64)
                r = _round_down(np.where(usable > 0, usable / den, 0.0))
                pair = r if pair is None else np.maximum(pair, r)
    else:
        pred = np.argmax(f, axis=1)
        target = pred if labels is None else labels
        ft = f[rows, target]
        others = f.copy()
        others[rows, target] = -np.inf  # exclude only index t itself (docs/certificate.md, ties)
        margin = ft - np.max(others, axis=1)
        usable = np.maximum(margin - delta, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            glob = _round_down(np.where(usable > 0, usable / (_SQRT2_UP * lipschitz), 0.0))
        pair = None
        for cand in tails:
            r = _pairwise(f, target, delta, cand)
            pair = r if pair is None else np.maximum(pair, r)
    correct = pred == target
    best = glob if pair is None else np.maximum(glob, pair)
    best = np.where(correct, best, 0.0)
    method = "pairwise" if pair is not None else "global"
    return Radii(best, np.where(correct, glob, 0.0), None if pair is None else np.where(correct, pair, 0.0),
                 pred.astype(np.int64), np.asarray(target, dtype=np.int64), correct, method)


def _pairwise(f: np.ndarray, target: np.ndarray, delta: np.ndarray, cand: Any) -> np.ndarray:
    n, k = f.shape
    if cand.matrix.shape[0] != k:
        raise LipgraphError(
            f"the affine tail has {cand.matrix.shape[0]} outputs but the model gives {k} logits"
        )
    norms = np.empty((k, k))
    for t in np.unique(target):
        norms[t] = cand.pair_norms(int(t))
    den = norms[target] * (cand.l_h * (1.0 + 4 * _EPS64))  # (N, K)
    rows = np.arange(n)
    diff = f[rows, target][:, None] - f - delta[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(diff > 0, diff / den, 0.0)  # a zero-norm pair with positive margin: +inf (never flips)
    q = np.where((diff > 0) & (den == 0), np.inf, q)
    q[rows, target] = np.inf
    return _round_down(np.min(q, axis=1))


@dataclass
class Certificate:
    """The result of :func:`certify`; :meth:`to_json` is the report's source of truth."""

    lipschitz_bound: float
    samples: int
    clean_accuracy: float | None  # None without labels
    certified_accuracy: dict[str, float]
    median_radius: float
    mean_radius: float
    radius_method: str
    nodes: list[dict[str, Any]]
    meta: dict[str, Any]
    eps: list[float]
    radii: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray | None
    correct: np.ndarray
    warnings: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = True
    per_sample: bool = False
    baseline: dict[str, Any] | None = None

    def certified_at(self, eps: float) -> float:
        """Fraction of samples correctly classified with a radius of at least ``eps``."""
        return float(np.mean(self.correct & (self.radii >= eps))) if self.samples else 0.0

    def to_json(self, per_sample: bool | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lipschitz_bound": self.lipschitz_bound,
            "samples": self.samples,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": dict(self.certified_accuracy),
            "median_radius": self.median_radius,
            "mean_radius": self.mean_radius,
            "radius_method": self.radius_method,
            "passed": self.passed,
            "gates": list(self.gates),
            "nodes": list(self.nodes),
            "warnings": list(self.warnings),
            "meta": dict(self.meta),
        }
        if self.baseline is not None:
            out["baseline"] = dict(self.baseline)
        if self.per_sample if per_sample is None else per_sample:
            labels = self.labels
            out["per_sample"] = [
                {
                    "index": i,
                    "label": int(labels[i]) if labels is not None else None,
                    "prediction": int(self.predictions[i]),
                    "radius": float(self.radii[i]),
                }
                for i in range(self.samples)
            ]
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
    (``lipgraph.pairs``).
    """
    from lipgraph.analyze import analyze
    from lipgraph.chain import unfused_graph
    from lipgraph.data import fit_inputs, fit_labels
    from lipgraph.floaterr import FLOAT32_UNIT_ROUNDOFF, float_error_model
    from lipgraph.floaterr.chain_sample import chain_float
    from lipgraph.graph_build import build_graph
    from lipgraph.inference import DEFAULT_BATCH_SIZE, Runner, logits_model, model_input, resolve_providers
    from lipgraph.loader import load_model
    from lipgraph.pairs import pair_candidates, parse_mode
    from lipgraph.passes import run_passes
    from lipgraph.providers import check_precision, ensure_precision_covered, parse_providers, tf32_operand_roundoff
    from lipgraph.rules import load_rules
    from lipgraph.tail import find_tail

    t_start = time.perf_counter()
    eps_list = _check_eps(eps)
    try:
        parse_mode(tight_pairs)
    except ValueError as exc:
        raise LipgraphError(str(exc)) from None
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
    sample_shape = (1, *xf.shape[1:])
    error_model = None
    if analysis is None:
        load_rules()  # imports happen here, not concurrently in the worker
        # Bound at the data's own size: symbolic dimensions become concrete (sound for these
        # inputs, and tighter: conv bounds on the exact grid instead of the LMT overlap bound).
        def bound_and_error() -> tuple[Any, Any, np.ndarray, Any]:
            an = analyze(proto, input_name=graph.input_name, input_shape=sample_shape)
            em = float_error_model(proto, graph.input_name, sample_shape, logits_name, u, dot_operand_roundoff, an)
            return an, em, _input_norms(xf), chain_float(proto, graph.input_name, sample_shape, logits_name, xf, u,
                                                         dot_operand_roundoff)

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
        analysis, error_model, input_norms, per_sample_err = background.result()
        analysis.meta.update(file_meta)
    else:
        error_model = float_error_model(proto, graph.input_name, sample_shape, logits_name, u, dot_operand_roundoff,
                                        analysis)
        input_norms = _input_norms(xf)
        per_sample_err = chain_float(proto, graph.input_name, sample_shape, logits_name, xf, u, dot_operand_roundoff)
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
                        unfused_graph=lambda: unfused_graph(proto, graph.input_name, sample_shape),
                        margin_rel=MARGIN_REL)
    radii = compute_radii(logits, labels, lipschitz, list(tails) + extra, error_model.at(input_norms), error_model.d,
                          per_sample_err.candidates())
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
        "float_allowance": (
            "margins reduced by twice a proven bound e(||x||) on the float32 logits' error "
            f"(floor {MARGIN_REL:g} * max|logit|); radii rounded down"
        ),
        "float_error": {**error_model.describe(), "max_over_samples": float(np.max(error_model.at(input_norms)))
                        if n else 0.0, "per_sample_chain": per_sample_err.describe(radii.float_error_choice)},
        "time_inference_s": round(t_inf, 4),
        "time_bound_wait_s": round(t_wait, 4),  # the bound runs beside inference; this is what it added
        "time_radii_s": round(t_radii, 4),
        "time_total_s": round(time.perf_counter() - t_start, 4),
    })
    ensure_precision_covered(runner.precision, meta.get("float_error"), tf32_roundoff)
    warns.extend(runner.warnings)
    if pair_meta.get("budget_exhausted"):
        warns.append("--tight-pairs: the time budget ran out; the remaining pairs keep their cheaper bounds")
    if pair_meta.get("work_capped"):
        warns.append("--tight-pairs auto: refined the pairs deciding most samples only; the others keep their "
                     "fast bounds (--tight-pairs SECONDS refines more)")
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
    )
