"""Bound once, certify anywhere: read a `lipgraph bound --format json` report back as an analysis.

``lipgraph certify MODEL --bound bound.json`` reuses the bound instead of recomputing it, after checking
that the report was made for this very model (sha256 of the model's bytes, refused on mismatch) and for
inputs of the data's per-sample shape (a concrete size in the report must equal the data's; a ``?`` size
means the bound holds for every size). Only the graph structure is rebuilt (shape inference and passes,
no norms) so that the affine tail of the pairwise radii finds its split points; each node's recorded
cumulative bound becomes the bound of its first output.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lipgraph.errors import LipgraphError


@dataclass
class _Row:
    """A node row as the report holds it (certify only needs ``to_json``)."""

    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass
class LoadedAnalysis:
    """The subset of :class:`lipgraph.analyze.Analysis` that :func:`lipgraph.certify.certify` uses."""

    bound: float
    nodes: list[_Row]
    warnings: list[str]
    meta: dict[str, Any]
    graph: Any
    tensor_bounds: dict[str, float] = field(default_factory=dict)

    @property
    def logits_name(self) -> str:
        return self.graph.output_name

    @property
    def input_name(self) -> str:
        return self.graph.input_name


def read_bound_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LipgraphError(f"bound file '{p}' does not exist; make it with `lipgraph bound MODEL -o {p.name}`")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise LipgraphError(
            f"'{p}' is not a JSON bound report; make it with `lipgraph bound MODEL --format json -o {p.name}`"
        ) from None
    bound = doc.get("lipschitz_bound") if isinstance(doc, dict) else None
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if not _is_number(bound) or not isinstance(meta, dict) or not isinstance(doc.get("nodes"), list):
        raise LipgraphError(f"'{p}' is not a lipgraph bound report (no lipschitz_bound / meta / nodes)")
    if not _is_bound(bound):
        raise LipgraphError(f"'{p}' holds the bound {str(bound)[:40]}; only a finite bound can certify")
    _check_fields(doc, meta, p)
    return doc


def _is_number(v: Any) -> bool:
    # JSON true/false load as bool, a subclass of int: `true` is not a bound
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_bound(v: Any) -> bool:
    try:
        return _is_number(v) and math.isfinite(float(v)) and float(v) >= 0
    except OverflowError:  # an integer beyond float range
        return False


def _check_fields(doc: dict[str, Any], meta: dict[str, Any], p: Path) -> None:
    """Refuse, as one line, a report whose fields do not have the types `lipgraph bound` writes.

    The per-node cumulative bounds are read by the affine tail of the pairwise radii; a NaN, negative or
    non-numeric one is a damaged file, not a claim (a smaller finite value is the user's claim, like the bound).
    """
    from lipgraph.version import __version__

    def bad(what: str) -> LipgraphError:
        return LipgraphError(f"'{p}' is not a well-formed lipgraph bound report ({what})")

    if not isinstance(meta.get("model_sha256"), str):
        raise bad("meta.model_sha256 is not a string")
    if meta.get("input") is not None and not isinstance(meta.get("input"), str):
        raise bad("meta.input is not a string")
    shape = meta.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list) and all(d == "?" or (_is_number(d) and isinstance(d, int) and d >= 1) for d in shape)
    ):
        raise bad("meta.input_shape is not a list of positive sizes and '?'")
    versions = meta.get("versions")
    made_by = versions.get("lipgraph") if isinstance(versions, dict) else None
    if made_by != __version__:
        # Rows are matched to the rebuilt graph's nodes by name: another version's passes may fuse and name
        # nodes differently, so its cumulative bounds could land on other tensors.
        raise LipgraphError(
            f"the bound in '{p}' was made by lipgraph {made_by}, this is {__version__}; rerun `lipgraph bound`"
        )
    if not isinstance(doc.get("warnings", []), list):
        raise bad("warnings is not a list")
    for row in doc["nodes"]:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise bad("a node row without a name")
        if "cumulative" in row and not _is_bound(row["cumulative"]):
            raise bad(f"node '{row['name']}' has the cumulative bound {row['cumulative']!r}")


def load_bound(
    path: str | os.PathLike[str], proto: onnx.ModelProto, sha256: str, input_name: str | None = None
) -> LoadedAnalysis:
    """The report at ``path`` as an analysis of ``proto`` (whose file has the digest ``sha256``)."""
    from lipgraph.graph_build import build_graph
    from lipgraph.passes import run_passes

    doc = read_bound_report(path)
    meta = dict(doc["meta"])
    recorded = meta.get("model_sha256")
    if recorded != sha256:
        raise LipgraphError(
            f"the bound in '{path}' was computed for another model (sha256 {str(recorded)[:12]}..., "
            f"this model {sha256[:12]}...); rerun `lipgraph bound` on this model"
        )
    if input_name is not None and meta.get("input") not in (None, input_name):
        raise LipgraphError(f"the bound in '{path}' is for the input '{meta.get('input')}', not '{input_name}'")
    shape = meta.get("input_shape")
    concrete = tuple(int(d) for d in shape) if shape and all(isinstance(d, int) for d in shape) else None
    graph = build_graph(proto, meta.get("input") or input_name, concrete)
    run_passes(graph)
    bounds: dict[str, float] = {graph.input_name: 1.0}
    by_name = {n.name: n for n in graph.nodes}
    for row in doc["nodes"]:
        node = by_name.get(row["name"])
        if node is not None and node.outputs and "cumulative" in row:
            bounds[node.outputs[0]] = float(row["cumulative"])
    bounds[graph.output_name] = float(doc["lipschitz_bound"])
    meta["bound_file"] = str(path)
    return LoadedAnalysis(
        float(doc["lipschitz_bound"]),
        [_Row(r) for r in doc["nodes"]],
        [str(w) for w in doc.get("warnings", [])],
        meta,
        graph,
        bounds,
    )


def check_input_shape(analysis: LoadedAnalysis, sample_shape: tuple[int, ...], path: str) -> None:
    """Refuse data whose per-sample shape differs from the one the bound was computed at."""
    shape = analysis.meta.get("input_shape") or []
    want = list(shape[1:])
    have = list(sample_shape)
    if len(want) != len(have) or any(isinstance(w, int) and w != h for w, h in zip(want, have, strict=False)):
        txt = "x".join(str(d) for d in want)
        raise LipgraphError(
            f"the bound in '{path}' was computed for inputs of shape {txt}, but the data has "
            f"{'x'.join(map(str, have))}; rerun `lipgraph bound --input-shape` at the data's size"
        )


def fitted_sample_shape(proto: onnx.ModelProto, input_name: str, x: Any, source: str) -> tuple[int, ...]:
    """The per-sample shape the data takes once fitted to the model (a one-sample probe)."""
    from lipgraph.data import fit_inputs
    from lipgraph.inference import model_input

    inp = model_input(proto, input_name)
    probe = x.read(0, 1) if hasattr(x, "read") else np.asarray(x[:1])
    return tuple(fit_inputs(probe, inp.shape, inp.dtype, source).shape[1:])
