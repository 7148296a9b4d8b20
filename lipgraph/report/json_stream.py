"""The JSON report of `lipgraph certify --per-sample`, written piece by piece.

A report with per-sample rows used to be one list of N dicts plus one string of the whole document
(about 100 bytes a row, twice over), built again by every other format that read ``to_json()``. Here the
summary is rendered once without the rows, and the rows follow from the certificate's arrays in chunks
of :data:`ROWS_PER_CHUNK`, each chunk written to the (temporary) report file before the next is built.
The bytes are those of ``json.dumps(cert.to_json(), indent=2, allow_nan=True) + "\\n"``: the rows are the
document's last key, and each chunk is rendered by ``json.dumps`` itself and indented one level deeper.

The rows can only be written once every sample has its radius: the radii need the network's bound and
the class pairs chosen from all the logits (``--tight-pairs auto``), which are known after the last batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

ROWS_PER_CHUNK = 4096


def has_rows(report: Any) -> bool:
    """Whether ``report`` is a certificate whose JSON carries per-sample rows."""
    return bool(getattr(report, "per_sample", False)) and hasattr(report, "radii") and dataclasses.is_dataclass(report)


def without_rows(report: Any) -> Any:
    """The same certificate for the formats that show no per-sample rows (a shallow copy: arrays shared)."""
    return dataclasses.replace(report, per_sample=False) if has_rows(report) else report


def _rows(cert: Any, start: int, stop: int) -> list[dict[str, Any]]:
    labels = cert.labels
    preds = cert.predictions[start:stop].tolist()
    radii = cert.radii[start:stop].tolist()
    labs = labels[start:stop].tolist() if labels is not None else [None] * (stop - start)
    rows = [
        {"index": i, "label": int(lab) if lab is not None else None, "prediction": int(p), "radius": float(r)}
        for i, lab, p, r in zip(range(start, stop), labs, preds, radii, strict=True)
    ]
    methods = getattr(cert, "sample_methods", None)  # which method gave each radius (lipgraph.local_bounds)
    if methods is not None:
        for row, m in zip(rows, methods[start:stop], strict=True):
            row["radius_method"] = str(m)
    return rows


def json_chunks(cert: Any, rows_per_chunk: int | None = None) -> Iterator[str]:
    """The JSON report of ``cert`` in pieces (the rows last, a chunk at a time)."""
    rows_per_chunk = rows_per_chunk or ROWS_PER_CHUNK
    head = json.dumps(cert.to_json(per_sample=False), indent=2, allow_nan=True)
    if not has_rows(cert):
        yield head + "\n"
        return
    assert head.endswith("\n}")
    n = int(cert.samples)
    if n == 0:
        yield head[:-2] + ',\n  "per_sample": []\n}\n'
        return
    yield head[:-2] + ',\n  "per_sample": ['
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        text = json.dumps(_rows(cert, start, stop), indent=2, allow_nan=True)
        # "[\n  {...},\n  {...}\n]" -> the items, one level deeper (no row holds a newline of its own).
        body = text[1:-2].replace("\n", "\n  ")
        yield body if start == 0 else "," + body
    yield "\n  ]\n}\n"
