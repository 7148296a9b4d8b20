"""Certification spread over machines: partial reports of `certify --shard K/N` and their exact merge.

A shard certifies every N-th block of ``block`` samples (:class:`lipgraph.stream.Shard`); its partial
report keeps, per sample, the global index, label, prediction, correctness and radius (JSON floats
round-trip exactly). :func:`merge_partials` checks that the parts belong together (same model digest,
bound, eps grid, sample count, block size; shards 1..N each once, indices a partition of the data),
puts the samples back in their global order and computes the metrics with the same expressions as a
single run, so the merged report equals the single run's bit for bit. Gates are applied by the caller
(`lipgraph merge`), on the merged report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lipgraph.certificate import Certificate, eps_key
from lipgraph.errors import LipgraphError

KIND = "lipgraph-partial-certificate"


def partial_report(
    cert: Certificate, indices: np.ndarray, shard: tuple[int, int], block: int, total: int
) -> dict[str, Any]:
    """The JSON document of one shard (see the module docstring)."""
    return {
        "kind": KIND,
        "version": 1,
        "shard": list(shard),
        "block": int(block),
        "total_samples": int(total),
        "lipschitz_bound": cert.lipschitz_bound,
        "eps": [float(e) for e in cert.eps],
        "radius_method": cert.radius_method,
        "has_labels": cert.labels is not None,
        "index": [int(i) for i in indices],
        "label": None if cert.labels is None else [int(v) for v in cert.labels],
        "prediction": [int(v) for v in cert.predictions],
        "correct": [bool(v) for v in cert.correct],
        "radius": [float(v) for v in cert.radii],
        **({"radius_by": [str(v) for v in cert.sample_methods]} if cert.sample_methods is not None else {}),
        "nodes": cert.nodes,
        "warnings": cert.warnings,
        "meta": cert.meta,
    }


def read_partial(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise LipgraphError(f"partial report '{p}' does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise LipgraphError(f"'{p}' is not JSON; make the parts with `lipgraph certify --shard K/N -o`") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise LipgraphError(f"'{p}' is not a partial report of `lipgraph certify --shard K/N`")
    n = len(doc.get("index", []))
    for key in ("prediction", "correct", "radius"):
        if len(doc.get(key) or []) != n:
            raise LipgraphError(f"'{p}' is damaged: '{key}' has {len(doc.get(key) or [])} entries for {n} samples")
    doc["_path"] = str(p)
    return doc


def merge_partials(docs: list[dict[str, Any]], extra_eps: list[float] = ()) -> Certificate:  # type: ignore[assignment]
    """One :class:`Certificate` from the partial reports of every shard (refuses incomplete sets)."""
    if not docs:
        raise LipgraphError("nothing to merge: pass the partial reports of every shard")
    first = docs[0]
    count = int(first["shard"][1])
    same = ("total_samples", "block", "lipschitz_bound", "eps", "has_labels", "radius_method")
    for d in docs[1:]:
        for key in same:
            if d.get(key) != first.get(key):
                raise LipgraphError(
                    f"'{d['_path']}' and '{first['_path']}' differ in {key} "
                    f"({d.get(key)!r} vs {first.get(key)!r}); they are not parts of one run"
                )
        if d["meta"].get("model_sha256") != first["meta"].get("model_sha256"):
            raise LipgraphError(f"'{d['_path']}' and '{first['_path']}' certify different models (sha256)")
        if _data_id(d) != _data_id(first):
            raise LipgraphError(
                f"'{d['_path']}' and '{first['_path']}' certify other data ({_data_id(d)} vs {_data_id(first)}); "
                "certify every part with the same --data"
            )
        if _settings(d) != _settings(first):
            raise LipgraphError(
                f"'{d['_path']}' and '{first['_path']}' were certified with other settings "
                f"({_settings(d)} vs {_settings(first)}); they are not parts of one run"
            )
    seen = sorted(int(d["shard"][0]) for d in docs)
    if any(int(d["shard"][1]) != count for d in docs) or seen != list(range(1, count + 1)):
        missing = sorted(set(range(1, count + 1)) - set(seen))
        dup = sorted({s for s in seen if seen.count(s) > 1})
        raise LipgraphError(
            f"the parts must be shards 1..{count} once each (missing {missing or 'none'}, repeated {dup or 'none'})"
        )
    total = int(first["total_samples"])
    index = np.concatenate([np.asarray(d["index"], dtype=np.int64) for d in docs])
    if len(index) != total or not np.array_equal(np.sort(index), np.arange(total)):
        raise LipgraphError(f"the parts hold {len(index)} samples with gaps or overlaps; expected 0..{total - 1} once")
    order = np.argsort(index, kind="stable")

    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(d[key], dtype=dtype) for d in docs])[order]

    radii = cat("radius", np.float64)
    correct = cat("correct", bool)
    preds = cat("prediction", np.int64)
    labels = cat("label", np.int64) if first["has_labels"] else None
    eps_list = sorted({float(e) for e in first["eps"]} | {float(e) for e in extra_eps})
    # The same expressions as lipgraph.certify.certify, on the arrays in the same order.
    cert_acc = {eps_key(e): float(np.mean(correct & (radii >= e))) for e in eps_list}
    clean = float(np.mean(correct)) if labels is not None else None
    meta = dict(first["meta"])
    meta["data"] = dict(meta.get("data", {}), samples=total)
    meta["shards"] = {"count": count, "block": int(first["block"]), "parts": [d["_path"] for d in docs]}
    for key in ("time_inference_s", "time_bound_wait_s", "time_radii_s", "time_total_s"):
        meta[key] = round(sum(float(d["meta"].get(key, 0.0)) for d in docs), 4)
    mins = [d["meta"].get("data", {}).get("input_min") for d in docs]
    maxs = [d["meta"].get("data", {}).get("input_max") for d in docs]
    if all(isinstance(v, (int, float)) for v in mins + maxs):
        meta["data"]["input_min"], meta["data"]["input_max"] = min(mins), max(maxs)
    _sum_local_counts(meta, docs)
    methods = cat("radius_by", object) if all(len(d.get("radius_by") or []) == len(d["index"]) for d in docs) else None
    warnings = list(dict.fromkeys(w for d in docs for w in d.get("warnings", [])))
    return Certificate(
        lipschitz_bound=float(first["lipschitz_bound"]),
        samples=total,
        clean_accuracy=clean,
        certified_accuracy=cert_acc,
        median_radius=float(np.median(radii)),
        mean_radius=float(np.mean(radii)),
        radius_method=str(first["radius_method"]),
        nodes=list(first["nodes"]),
        meta=meta,
        eps=eps_list,
        radii=radii,
        predictions=preds,
        labels=labels,
        correct=correct,
        warnings=warnings,
        sample_methods=methods,
    )


def _data_id(doc: dict[str, Any]) -> dict[str, Any]:
    """What a part says of its data beyond the sample count: the file's name (not its folder, which differs
    between CI machines), the keys and the dtype. Parts of two files of one size merged into a report of
    neither. No digest of the contents is kept, so a file changed under the same name is not caught."""
    data = (doc.get("meta") or {}).get("data") or {}
    source = data.get("source")
    name = Path(str(source).rstrip("/\\")).name if source is not None else None
    return {"file": name, **{k: data.get(k) for k in ("x_key", "y_key", "input_dtype")}}


def _settings(doc: dict[str, Any]) -> dict[str, Any]:
    """What decides a part's radii beyond its samples: the per-pair and local bounds' modes, the bracketing steps
    and the float model. Parts that differ here would merge into no single run's result, and the merged report
    would describe the first part's settings only."""
    meta = doc.get("meta") or {}
    local, pairs, flt = meta.get("local_bounds") or {}, meta.get("pair_bounds") or {}, meta.get("float_error") or {}
    return {
        "local_bounds": local.get("mode"),
        "radius_steps": (local.get("bisection") or {}).get("steps"),
        "tight_pairs": pairs.get("mode"),
        "float_model": [flt.get(k) for k in ("subnormals", "unit_roundoff", "dot_operand_roundoff")],
    }


def _sum_local_counts(meta: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """The per-sample local bounds' counts (lipgraph.local_bounds) over every part, not the first part's."""
    parts = [d["meta"].get("local_bounds") or {} for d in docs]
    if not all(p.get("used") for p in parts):
        return
    merged = dict(parts[0])
    for key in ("samples_checked", "samples_improved", "samples_refuted_by_attack"):
        merged[key] = {e: sum(int(p.get(key, {}).get(e, 0)) for p in parts) for e in parts[0].get(key, {})}
    merged["samples_from_local"] = sum(int(p.get("samples_from_local", 0)) for p in parts)
    if all(isinstance(p.get("bisection"), dict) for p in parts):  # radii checked between grid points
        summed = {k: sum(int(p["bisection"][k]) for p in parts) for k in ("evaluations", "samples_raised")}
        merged["bisection"] = {**parts[0]["bisection"], **summed}
    merged["time_s"] = round(sum(float(p.get("time_s", 0.0)) for p in parts), 4)
    meta["local_bounds"] = merged
