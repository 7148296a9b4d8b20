"""CI gates for `lipgraph certify`: thresholds from flags and from ``[tool.lipgraph]`` in pyproject.toml.

Settings (flag / pyproject key; underscores are accepted in place of dashes):

* ``--min-certified-accuracy EPS=ACC`` (repeatable) / ``min-certified-accuracy = {"0.5" = 0.8}``
* ``--min-clean-accuracy ACC`` / ``min-clean-accuracy = 0.9``
* ``--max-lipschitz L`` / ``max-lipschitz = 10.0``
* ``--baseline OLD.json`` / ``baseline = "reports/baseline.json"`` (relative to the pyproject's folder)
* ``--max-drop D`` / ``max-drop = 0.01`` (default 0 when a baseline is given: any drop fails)
* ``--eps E`` (repeatable) / ``eps = [0.1, 0.25, 0.5, 1.0]``

Which file is read is decided in :mod:`lipgraph.config` (the nearest pyproject.toml that has a
``[tool.lipgraph]`` table, from the working directory up; ``--config PATH``; ``--no-config``). A flag
replaces the file's value of the same setting as a whole (``--min-certified-accuracy`` replaces the
file's table).
Malformed settings are errors (exit 2), never silently ignored gates.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lipgraph.errors import LipgraphError
from lipgraph.numbers import comparison, round_down, shortest

OTHER_TABLES = {"train", "bound", "report", "html", "rules"}
GATE_KEYS = {"min-certified-accuracy", "min-clean-accuracy", "max-lipschitz", "baseline", "max-drop", "eps"}


@dataclass
class GateConfig:
    min_certified_accuracy: dict[float, float] | None = None
    min_clean_accuracy: float | None = None
    max_lipschitz: float | None = None
    baseline: str | None = None
    max_drop: float | None = None
    eps: list[float] | None = None
    source: str | None = None  # the pyproject.toml it came from, if any

    def any_gate(self) -> bool:
        return bool(self.min_certified_accuracy) or self.min_clean_accuracy is not None or (
            self.max_lipschitz is not None or self.baseline is not None
        )


@dataclass
class GateResult:
    name: str
    kind: str
    passed: bool
    actual: float | None
    threshold: float
    message: str
    eps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "passed": self.passed,
            "actual": self.actual,
            "threshold": self.threshold,
            "message": self.message,
        }
        if self.eps is not None:
            out["eps"] = self.eps
        out.update(self.extra)
        return out


# ------------------------------------------------------------------ parsing and validation
def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise LipgraphError(f"{what} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LipgraphError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise LipgraphError(f"{what} must be finite, got {value!r}")
    return v


def check_eps(value: Any, what: str = "eps") -> float:
    v = _number(value, what)
    if v < 0:
        raise LipgraphError(f"{what} must be >= 0, got {value}")
    return v


def check_accuracy(value: Any, what: str) -> float:
    v = _number(value, what)
    if not 0.0 <= v <= 1.0:
        raise LipgraphError(f"{what} must be an accuracy between 0 and 1, got {value}")
    return v


def check_positive(value: Any, what: str) -> float:
    v = _number(value, what)
    if v < 0:
        raise LipgraphError(f"{what} must be >= 0, got {value}")
    return v


def check_max_drop(value: Any, what: str) -> float:
    """A drop is a fraction in [0, 1). 1 would allow every drop (a gate that cannot fail), and is what a
    user who means "one percentage point" writes: refused, with the fraction to write instead."""
    v = check_accuracy(value, what)
    if v >= 1.0:
        raise LipgraphError(f"{what} must be a fraction below 1 (0.01 = one percentage point); "
                            f"{value} would allow any drop")
    return v


def eps_thresholds(pairs: Any, what: str) -> dict[float, float]:
    """``[(eps, acc), ...]`` as a dict; the same eps twice (``0.5`` and ``0.50``, or a flag repeated) is
    refused: a dict would keep the last threshold silently, possibly the weaker one."""
    out: dict[float, float] = {}
    for e, a in pairs:
        if e in out and out[e] != a:
            raise LipgraphError(f"{what} gives eps {e:g} twice ({out[e]:g} and {a:g}); give each eps once")
        out[e] = a
    return out


def parse_eps_acc(text: str) -> tuple[float, float]:
    """``"0.5=0.8"`` -> (0.5, 0.8)."""
    if text.count("=") != 1:
        raise LipgraphError(f"--min-certified-accuracy expects EPS=ACC (e.g. 0.5=0.8), got '{text}'")
    e, a = (s.strip() for s in text.split("="))
    return check_eps(e, f"eps in '{text}'"), check_accuracy(a, f"accuracy in '{text}'")


def flag_config(min_cert: tuple[str, ...], min_clean: float | None, max_lip: float | None, baseline: str | None,
                max_drop: float | None, eps: tuple[float, ...] = ()) -> GateConfig:
    """The gate flags of `certify` and `merge`, checked (one place, so both commands refuse the same)."""
    return GateConfig(
        min_certified_accuracy=eps_thresholds(map(parse_eps_acc, min_cert), "--min-certified-accuracy")
        if min_cert else None,
        min_clean_accuracy=check_accuracy(min_clean, "--min-clean-accuracy") if min_clean is not None else None,
        max_lipschitz=check_positive(max_lip, "--max-lipschitz") if max_lip is not None else None,
        baseline=baseline,
        max_drop=check_max_drop(max_drop, "--max-drop") if max_drop is not None else None,
        eps=list(eps) if eps else None,
    )


def load_config(path: Path) -> GateConfig:
    """``[tool.lipgraph]`` of ``path`` as a GateConfig (empty when the table is absent)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LipgraphError(f"cannot read '{path}': {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LipgraphError(f"'{path}' is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("lipgraph")
    if table is None:
        return GateConfig()
    if not isinstance(table, dict):
        raise LipgraphError(f"[tool.lipgraph] in '{path}' must be a table")
    cfg = GateConfig(source=str(path))
    where = f"[tool.lipgraph] in '{path}'"
    for raw_key, value in table.items():
        key = raw_key.replace("_", "-")
        if key not in GATE_KEYS:
            if isinstance(value, dict) and key in OTHER_TABLES:
                misplaced = sorted(str(k) for k in value if str(k).replace("_", "-") in GATE_KEYS)
                if misplaced:  # certify reads only [tool.lipgraph] itself: a gate here would never run
                    raise LipgraphError(f"{', '.join(misplaced)} in [tool.lipgraph.{raw_key}] of '{path}' is a gate "
                                        "setting: put it directly under [tool.lipgraph]")
                continue  # sub-tables of other commands (e.g. [tool.lipgraph.train])
            raise LipgraphError(f"unknown key '{raw_key}' in {where} (known: {', '.join(sorted(GATE_KEYS))})")
        what = f"{raw_key} in {where}"
        if key == "min-certified-accuracy":
            if not isinstance(value, dict) or not value:  # an empty table would be a gate that checks nothing
                raise LipgraphError(f'{what} must be a non-empty table like {{"0.5" = 0.8}}')
            cfg.min_certified_accuracy = eps_thresholds(
                ((check_eps(e, f"eps '{e}' of {what}"), check_accuracy(a, f"accuracy at eps {e} of {what}"))
                 for e, a in value.items()), what)
        elif key == "min-clean-accuracy":
            cfg.min_clean_accuracy = check_accuracy(value, what)
        elif key == "max-lipschitz":
            cfg.max_lipschitz = check_positive(value, what)
        elif key == "max-drop":
            cfg.max_drop = check_max_drop(value, what)
        elif key == "baseline":
            if not isinstance(value, str) or not value:
                raise LipgraphError(f"{what} must be a path string")
            cfg.baseline = str(path.parent / value) if not Path(value).is_absolute() else value
        elif key == "eps":
            if not isinstance(value, list) or not value:
                raise LipgraphError(f"{what} must be a non-empty list of numbers")
            cfg.eps = [check_eps(e, what) for e in value]
    return cfg


def merge(file_cfg: GateConfig, flags: GateConfig) -> GateConfig:
    """Flags override the file, setting by setting."""
    out = replace(file_cfg)
    for name in ("min_certified_accuracy", "min_clean_accuracy", "max_lipschitz", "baseline", "max_drop", "eps"):
        v = getattr(flags, name)
        if v is not None:
            setattr(out, name, v)
    if out.max_drop is not None and out.baseline is None:
        raise LipgraphError("--max-drop needs --baseline OLD.json (a report to compare with)")
    return out


def load_baseline(path: str) -> dict[float, float]:
    """Certified accuracy per eps from an earlier `lipgraph certify --format json` report."""
    p = Path(path)
    if not p.is_file():
        raise LipgraphError(f"baseline report '{p}' does not exist (or is not a file)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LipgraphError(f"baseline '{p}' is not a readable JSON report ({type(exc).__name__})") from None
    ca = data.get("certified_accuracy") if isinstance(data, dict) else None
    if not isinstance(ca, dict):
        raise LipgraphError(f"baseline '{p}' has no 'certified_accuracy' object; is it a certify JSON report?")
    if not ca:  # nothing to compare: bad input (exit 2), not a regression of the model (exit 1)
        raise LipgraphError(f"baseline '{p}' has an empty 'certified_accuracy'; regenerate it with "
                            "`lipgraph certify --format json -o BASELINE.json`")
    return {check_eps(k, f"eps '{k}' in baseline '{p}'"): check_accuracy(v, f"accuracy at {k} in baseline '{p}'")
            for k, v in ca.items()}


def baseline_origin(path: str) -> tuple[int | None, str | None]:
    """How many samples the baseline report certified and with which lipgraph (None where it does not say)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        n, version = doc.get("samples"), doc.get("meta", {}).get("versions", {}).get("lipgraph")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None, None
    return (n if isinstance(n, int) and not isinstance(n, bool) else None,
            version if isinstance(version, str) else None)


def check_labels(cfg: GateConfig, has_labels: bool, data: str) -> None:
    """Refuse accuracy gates on data without labels. Without labels the model's own predictions are
    certified, so "certified accuracy" counts robust predictions, right or wrong: labels stored under a
    key lipgraph does not read (``targets``) would turn a failing gate into a passing one."""
    if has_labels:
        return
    if cfg.min_certified_accuracy:
        raise LipgraphError(f"--min-certified-accuracy needs labels, but '{data}' has none (y / labels / y_test); "
                            "without them only the predictions' robustness is measured, right or wrong")
    if cfg.baseline is not None:
        raise LipgraphError(f"--baseline compares certified accuracy, which needs labels, but '{data}' has none "
                            "(y / labels / y_test)")
    if cfg.min_clean_accuracy is not None:
        raise LipgraphError(f"--min-clean-accuracy needs labels, but '{data}' has none (y / labels / y_test)")


def required_eps(cfg: GateConfig, baseline: dict[float, float] | None) -> list[float]:
    """Radii the gates need evaluated (added to the report's eps grid)."""
    out = list((cfg.min_certified_accuracy or {}).keys())
    if baseline:
        out.extend(baseline.keys())
    return out


# ------------------------------------------------------------------ evaluation
def evaluate(cert: Any, cfg: GateConfig, baseline: dict[float, float] | None) -> list[GateResult]:
    """Check every configured gate against ``cert`` (a Certificate).

    Each message prints its numbers the safe way (accuracies down, bounds and drops up, thresholds
    exactly as given) so that the comparison it states is true as printed (``lipgraph.numbers``).
    """
    res: list[GateResult] = []
    for e, acc in sorted((cfg.min_certified_accuracy or {}).items()):
        got = cert.certified_at(e)
        ok = got >= acc
        cmp = comparison(got, ">=" if ok else "<", acc, actual_up=False)
        res.append(GateResult(
            f"certified_accuracy@{e:g}", "min-certified-accuracy", ok, got, acc,
            f"certified accuracy at eps {e:g} is {cmp}", eps=e, extra={"comparison": cmp}))
    if cfg.min_clean_accuracy is not None:
        if cert.clean_accuracy is None:
            raise LipgraphError("--min-clean-accuracy needs labels in the data (y / labels / y_test)")
        got = cert.clean_accuracy
        ok = got >= cfg.min_clean_accuracy
        cmp = comparison(got, ">=" if ok else "<", cfg.min_clean_accuracy, actual_up=False)
        res.append(GateResult(
            "clean_accuracy", "min-clean-accuracy", ok, got, cfg.min_clean_accuracy,
            f"clean accuracy is {cmp}", extra={"comparison": cmp}))
    if cfg.max_lipschitz is not None:
        got = cert.lipschitz_bound
        ok = got <= cfg.max_lipschitz
        cmp = comparison(got, "<=" if ok else ">", cfg.max_lipschitz, actual_up=True, digits=8)
        res.append(GateResult(
            "lipschitz_bound", "max-lipschitz", ok, got, cfg.max_lipschitz,
            f"Lipschitz bound is {cmp}", extra={"comparison": cmp}))
    if cfg.baseline is not None and baseline is not None:
        drop_max = cfg.max_drop if cfg.max_drop is not None else 0.0
        shared = sorted(e for e in baseline if any(math.isclose(e, c) for c in cert.eps))
        if not shared:
            res.append(GateResult(
                "baseline", "max-drop", False, None, drop_max,
                f"the baseline '{cfg.baseline}' shares no eps with this report; nothing to compare"))
        for e in shared:
            old, new = baseline[e], cert.certified_at(e)
            # The drop in decimal arithmetic on the numbers as written (the baseline's JSON, this run's
            # fraction): a float difference such as 0.8 - 0.79 = 0.010000000000000009 would fail a
            # --max-drop 0.01 that the printed numbers say is met.
            drop_dec = shortest(old) - shortest(new)
            ok = drop_dec <= shortest(drop_max)
            drop = float(drop_dec)
            cmp = comparison(drop, "<=" if ok else ">", drop_max, actual_up=True)
            res.append(GateResult(
                f"baseline_drop@{e:g}", "max-drop", ok, drop, drop_max,
                f"certified accuracy at eps {e:g}: {round_down(old)} -> {round_down(new)} "
                f"(drop {cmp})",
                eps=e, extra={"baseline": old, "current": new, "comparison": cmp}))
    return res


# What to do about a failed gate, by kind: every output that names a failed gate also says this
# (JSON ``hint``, the text/Markdown detail, the JUnit failure, SARIF / GitHub / GitLab findings).
HINTS: dict[str, str] = {
    "min-certified-accuracy": "make the model more robust at this eps (e.g. Lipschitz-constrained training), "
                              "or lower min-certified-accuracy for this eps if the change is intended",
    "min-clean-accuracy": "retrain or fix the model, or lower min-clean-accuracy if the change is intended",
    "max-lipschitz": "constrain the layers' norms (`lipgraph bound` lists each node's bound), or raise "
                     "max-lipschitz if the change is intended",
    "max-drop": "fix the regression, or regenerate the baseline report (`lipgraph certify --format json -o "
                "BASELINE.json`) if the change is intended",
}


def _with_hints(results: list[GateResult]) -> list[GateResult]:
    for r in results:
        if not r.passed and r.kind in HINTS:
            r.extra.setdefault("hint", HINTS[r.kind])
    return results


def apply(cert: Any, cfg: GateConfig, baseline: dict[float, float] | None) -> None:
    """Evaluate the gates and record them (and ``passed``) on the certificate."""
    results = _with_hints(evaluate(cert, cfg, baseline))
    cert.gates = [r.to_json() for r in results]
    cert.passed = all(r.passed for r in results)
    if baseline is not None and cfg.baseline is not None:
        from lipgraph.certificate import eps_key

        accs = {eps_key(e): a for e, a in sorted(baseline.items())}
        cert.baseline = {"path": cfg.baseline, "certified_accuracy": accs}
        n_old, v_old = baseline_origin(cfg.baseline)
        v_new = (cert.meta.get("versions") or {}).get("lipgraph")
        # Not refused (a test set may grow, lipgraph may be upgraded), but never silent: every format
        # shows the warnings.
        if n_old is not None and n_old != cert.samples:
            cert.warnings = [*cert.warnings, (
                f"the baseline '{cfg.baseline}' certified {n_old} samples, this run {cert.samples}: its drops "
                "compare different data; regenerate the baseline on this data")]
        if v_old is not None and v_new is not None and v_old != v_new:
            # a newer lipgraph may prove larger radii for the same model, hiding a regression of the model
            cert.warnings = [*cert.warnings, (
                f"the baseline '{cfg.baseline}' was made by lipgraph {v_old}, this run by {v_new}: radii may "
                "differ for the same model; regenerate the baseline with this version")]
