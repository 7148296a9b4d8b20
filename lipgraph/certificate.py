"""The result of ``lipgraph certify``: metrics, per-sample radii and the JSON report's source of truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def eps_key(e: float) -> str:
    """The JSON key of a radius: ``str(float)`` ("0.5", "1.0", "1e-05")."""
    return str(float(e))


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
    sample_methods: np.ndarray | None = None  # per sample: the method that gave the radius (None: radius_method)

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
                    **({"radius_method": str(self.sample_methods[i])} if self.sample_methods is not None else {}),
                }
                for i in range(self.samples)
            ]
        return out
