"""SVG figures of the HTML report: certified accuracy against the radius, the radius histogram,
each node's own factor (:mod:`lipgraph.report.html` says what each shows)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from lipgraph.numbers import percent_down
from lipgraph.report.svg import Linear, attrs, esc, nice_max, num, polyline, step_path, svg_open, tick_label, ticks
from lipgraph.report.tables import fmt_float, fmt_lower, fmt_upper

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies; all dark enough on white.
BLUE = "#0072B2"
ORANGE = "#C26A00"  # a darker Okabe-Ito orange, for 3:1 contrast on white
GREEN = "#007A5A"
RED = "#C0392B"
GREY = "#6B6B6B"
GRID = "#E3E3E3"

_JOIN_OPS = {"Add", "Sub", "Sum", "Mean", "Concat", "Max", "Min", "Mul", "Div", "MatMul", "Einsum"}
_MAX_LAYER_ROWS = 60
_TOP_CONTRIBUTORS = 5

def pct(x: float | None) -> str:
    return percent_down(x)  # accuracies are rounded down in every format


def _short(name: str, n: int = 30) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _fmt_r(x: float) -> str:
    return fmt_float(x, 4)


# ------------------------------------------------------------------ the data behind the figures
def _curve_steps(radii: np.ndarray, correct: np.ndarray, n: int) -> list[tuple[float, float]]:
    """Corners (r, acc just after r) of the certified-accuracy step function, starting at (0, acc(0)).

    acc(r) = #{correct and radius >= r} / n is left-continuous and non-increasing: it keeps its value
    up to each distinct radius and drops right after it.
    """
    r = np.sort(np.asarray(radii, dtype=np.float64)[np.asarray(correct, dtype=bool)])
    m = r.size
    out = [(0.0, m / n if n else 0.0)]
    # an infinite radius (certified at every radius) never drops out: the curve ends above 0
    vals, counts = np.unique(r[np.isfinite(r)], return_counts=True)
    left = m
    for v, c in zip(vals, counts, strict=True):
        left -= int(c)
        out.append((float(v), left / n))
    return out


def _baseline_curve(base: dict[str, Any]) -> tuple[list[tuple[float, float]] | None, list[tuple[float, float]]]:
    """The baseline's step corners (when its report has per_sample) and its reported points."""
    points = sorted((float(k), float(v)) for k, v in (base.get("certified_accuracy") or {}).items())
    path = base.get("path")
    if not path:
        return None, points
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows = data.get("per_sample") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows:
            return None, points
        radii = np.array([float(r["radius"]) for r in rows])
        correct = np.array([r.get("label") is None or int(r["label"]) == int(r["prediction"]) for r in rows])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None, points  # the gates already read its certified_accuracy; draw what is certain
    if not np.all(radii >= 0):  # NaN fails this too
        return None, points
    return _curve_steps(radii, correct, len(rows)), points


def _min_allowed(g: dict[str, Any]) -> tuple[float, float] | None:
    """(eps, smallest allowed certified accuracy) of a gate that lives on the accuracy-vs-radius plane."""
    kind = g.get("kind")
    if kind == "min-certified-accuracy" and g.get("eps") is not None:
        return float(g["eps"]), float(g["threshold"])
    if kind == "min-clean-accuracy":
        return 0.0, float(g["threshold"])
    if kind == "max-drop" and g.get("eps") is not None and g.get("baseline") is not None:
        return float(g["eps"]), max(0.0, float(g["baseline"]) - float(g["threshold"]))
    return None


# ------------------------------------------------------------------ figure 1: certified accuracy vs radius
def _gate_marker(x: float, y: float, g: dict[str, Any]) -> str:
    """Upward triangle (passed) or cross (failed) at (eps, smallest allowed accuracy): shape and colour."""
    ok = bool(g["passed"])
    colour = GREEN if ok else RED
    e, t = _min_allowed(g) or (None, None)
    label = f"gate {'passed' if ok else 'FAILED'}: {g.get('message', g.get('name', ''))}"
    common = attrs(class_=f"gate {'gate-pass' if ok else 'gate-fail'}", data_kind=g.get("kind"),
                   data_eps=None if e is None else repr(e), data_threshold=None if t is None else repr(t),
                   data_passed="true" if ok else "false", data_colour=colour)
    if g.get("kind") == "max-drop":
        # a baseline gate is a diamond (its floor comes from the old report, not from the user's threshold)
        d = f"M{num(x)} {num(y - 7)} L{num(x + 7)} {num(y)} L{num(x)} {num(y + 7)} L{num(x - 7)} {num(y)} Z"
        if ok:
            return (f'<path {common} d="{d}" fill="{colour}" stroke="#fff" stroke-width="1.5">'
                    f"<title>{esc(label)}</title></path>")
        return (f'<g {common}><title>{esc(label)}</title>'
                f'<path d="{d}" fill="#fff" stroke="{colour}" stroke-width="3"/></g>')
    if ok:
        d = f"M{num(x)} {num(y - 8)} L{num(x + 7)} {num(y + 5)} L{num(x - 7)} {num(y + 5)} Z"
        return (f'<path {common} d="{d}" fill="{colour}" stroke="#fff" stroke-width="1.5">'
                f"<title>{esc(label)}</title></path>")
    d = f"M{num(x - 6)} {num(y - 6)} L{num(x + 6)} {num(y + 6)} M{num(x + 6)} {num(y - 6)} L{num(x - 6)} {num(y + 6)}"
    return (f'<g {common}><title>{esc(label)}</title><path d="{d}" fill="none" stroke="#fff" stroke-width="7"/>'
            f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="3.5"/></g>')


def accuracy_figure(d: dict[str, Any], cert: Any) -> str:
    n = int(d["samples"])
    radii = np.asarray(cert.radii, dtype=np.float64)
    correct = np.asarray(cert.correct, dtype=bool)
    n_inf = int(np.sum(correct & np.isinf(radii)))
    steps = _curve_steps(radii, correct, n)
    base = d.get("baseline")
    base_steps, base_points = _baseline_curve(base) if base else (None, [])
    gates = [(g, _min_allowed(g)) for g in d["gates"]]
    gates = [(g, p) for g, p in gates if p is not None]
    eps_pts = sorted((float(k), float(v)) for k, v in d["certified_accuracy"].items())

    # 0 to the largest radius (and every gate): eps points where the accuracy is already 0 do not
    # stretch the axis (the default grid can reach far past a small model's radii); they are listed instead
    xs = [r for r, _ in steps] + [p[0] for _, p in gates] + [e for e, a in eps_pts + base_points if a > 0]
    if base_steps:
        xs += [r for r, _ in base_steps if math.isfinite(r)]
    xmax, xstep = nice_max(max(xs) * 1.05 if max(xs) > 0 else 1.0, 6)
    beyond = sorted({e for e, _ in eps_pts + base_points if e > xmax})
    eps_pts = [(e, a) for e, a in eps_pts if e <= xmax]
    base_points = [(e, a) for e, a in base_points if e <= xmax]

    w, h = 760, 420
    left, right, top, bottom = 64, 24, 44, 56
    sx = Linear(0.0, xmax, left, w - right)
    sy = Linear(0.0, 1.0, h - bottom, top)
    yname = ("certified accuracy" if d["clean_accuracy"] is not None
             else "certified fraction (of the model's predictions)")
    clean_txt = pct(d["clean_accuracy"]) if d["clean_accuracy"] is not None else "n/a (no labels)"
    desc = (f"Step curve of {yname} against L2 radius from 0 to {tick_label(xmax, xstep)}; clean accuracy "
            f"{clean_txt}; " + "; ".join(f"at eps {e:g}: {pct(a)}" for e, a in eps_pts)
            + (f"; {len(gates)} gate marker(s)" if gates else "") + ("; baseline drawn" if base else "") + ".")
    out = [svg_open("fig-accuracy", w, h, f"{yname.capitalize()} against L2 radius", desc,
                    data_xmax=repr(xmax), data_plot=f"{left} {top} {w - left - right} {h - top - bottom}")]
    # grid and axes
    for t in ticks(0.0, 1.0, 0.2):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{num(y)}" y2="{num(y)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 8}" y="{num(y + 4)}" text-anchor="end">{int(round(t * 100))}%</text>')
    for t in ticks(0.0, xmax, xstep):
        x = sx(t)
        out.append(f'<line x1="{num(x)}" x2="{num(x)}" y1="{top}" y2="{h - bottom}" stroke="{GRID}"/>')
        out.append(f'<text x="{num(x)}" y="{h - bottom + 18}" text-anchor="middle">{esc(tick_label(t, xstep))}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
               f'fill="none" stroke="#888"/>')
    out.append(f'<text x="{(left + w - right) / 2:.0f}" y="{h - 14}" text-anchor="middle">'
               "L2 radius ε (input units)</text>")
    out.append(f'<text transform="translate(16 {(top + h - bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f"{esc(yname)}</text>")
    # the baseline first, so that the current curve is drawn over it
    if base_steps:
        pts = [(sx(r), sy(a)) for r, a in base_steps] + [(sx(xmax), sy(base_steps[-1][1]))]
        out.append(f'<path class="baseline-curve" d="{step_path(pts)}" fill="none" stroke="{ORANGE}" '
                   f'stroke-width="2" stroke-dasharray="6 4"><title>baseline: {esc(base.get("path", ""))}'
                   "</title></path>")
    elif base_points:
        pts = [(sx(e), sy(a)) for e, a in base_points]
        if len(pts) > 1:
            out.append(f'<polyline class="baseline-curve" points="{polyline(pts)}" fill="none" stroke="{ORANGE}" '
                       f'stroke-width="1.5" stroke-dasharray="3 4"><title>baseline, joined between the eps it '
                       f"reports (its curve in between is not known)</title></polyline>")
    for e, a in base_points:
        out.append(f'<rect class="baseline-point" x="{num(sx(e) - 4.5)}" y="{num(sy(a) - 4.5)}" width="9" height="9" '
                   f'fill="#fff" stroke="{ORANGE}" stroke-width="2" {attrs(data_eps=repr(e), data_acc=repr(a))}>'
                   f"<title>baseline at eps {e:g}: {pct(a)}</title></rect>")
    # the curve itself, extended flat to the right edge
    pts = [(sx(r), sy(a)) for r, a in steps] + [(sx(xmax), sy(steps[-1][1]))]
    out.append(f'<path class="curve" d="{step_path(pts)}" fill="none" stroke="{BLUE}" stroke-width="2.5">'
               f"<title>{esc(yname)} (exact, from {n} per-sample radii)</title></path>")
    for e, a in eps_pts:
        out.append(f'<circle class="eps-point" cx="{num(sx(e))}" cy="{num(sy(a))}" r="4.5" fill="{BLUE}" '
                   f'stroke="#fff" stroke-width="1.5" {attrs(data_eps=repr(e), data_acc=repr(a))}>'
                   f"<title>eps {e:g}: {pct(a)}</title></circle>")
    for g, (e, t) in gates:
        out.append(_gate_marker(sx(e), sy(t), g))
    # legend, above the plot
    lx, ly = left, 20
    items = [(f'<line x1="0" x2="22" y1="0" y2="0" stroke="{BLUE}" stroke-width="2.5"/>', "this model")]
    if base:
        items.append((f'<line x1="0" x2="22" y1="0" y2="0" stroke="{ORANGE}" stroke-width="2" '
                      f'stroke-dasharray="6 4"/><rect x="6.5" y="-4.5" width="9" height="9" fill="#fff" '
                      f'stroke="{ORANGE}" stroke-width="2"/>', "baseline"))
    user_gates = [g for g, _ in gates if g.get("kind") != "max-drop"]
    drop_gates = [g for g, _ in gates if g.get("kind") == "max-drop"]
    if any(g["passed"] for g in user_gates):
        items.append((f'<path d="M11 -8 L18 5 L4 5 Z" fill="{GREEN}"/>', "gate passed (minimum allowed)"))
    if any(not g["passed"] for g in user_gates):
        items.append((f'<path d="M5 -6 L17 6 M17 -6 L5 6" stroke="{RED}" stroke-width="3.5"/>',
                      "gate failed (minimum allowed)"))
    if any(g["passed"] for g in drop_gates):
        items.append((f'<path d="M11 -7 L18 0 L11 7 L4 0 Z" fill="{GREEN}"/>',
                      "baseline gate passed (baseline − max drop)"))
    if any(not g["passed"] for g in drop_gates):
        items.append((f'<path d="M11 -7 L18 0 L11 7 L4 0 Z" fill="#fff" stroke="{RED}" stroke-width="3"/>',
                      "baseline gate failed (baseline − max drop)"))
    for sym, label in items:
        out.append(f'<g transform="translate({lx} {ly})">{sym}<text x="28" y="4">{esc(label)}</text></g>')
        lx += 40 + 7 * len(label)
    out.append("</svg>")
    cap = ("Certified accuracy at radius ε: the fraction of samples classified correctly whose certified L2 "
           "radius is at least ε (at ε = 0, the clean accuracy). Computed exactly from every sample's radius; "
           "dots mark the reported eps values.")
    if beyond:
        cap += (f" Beyond the plotted range, at ε = {', '.join(f'{e:g}' for e in beyond)}, the certified accuracy "
                "is 0 (see the table).")
    if n_inf:
        cap += f" {n_inf} sample(s) have an infinite radius (certified at every ε)."
    if base and not base_steps:
        cap += (" The baseline report has no per-sample radii: only the eps values it reports are known "
                "(squares); the dotted line between them is a guide, not data.")
    return f'<figure>{"".join(out)}<figcaption>{esc(cap)}</figcaption></figure>'


# ------------------------------------------------------------------ figure 2: histogram of radii
def histogram_figure(d: dict[str, Any], cert: Any) -> str:
    radii = np.asarray(cert.radii, dtype=np.float64)
    correct = np.asarray(cert.correct, dtype=bool)
    n = int(d["samples"])
    n_wrong = int(np.sum(~correct))
    finite = correct & np.isfinite(radii)
    n_inf = int(np.sum(correct & ~np.isfinite(radii)))
    r = radii[finite]
    rmax = float(r.max()) if r.size else 0.0
    xmax, xstep = nice_max(rmax if rmax > 0 else 1.0, 6)
    bins = int(min(30, max(6, math.ceil(math.sqrt(max(r.size, 1))))))
    width = xmax / bins
    counts = np.bincount(np.minimum((r / width).astype(np.int64), bins - 1), minlength=bins) if r.size \
        else np.zeros(bins, dtype=np.int64)
    w, h = 760, 320
    left, right, top, bottom = 64, 24, 20, 56
    gap = 70  # the misclassified bar lives left of the radius axis
    sx = Linear(0.0, xmax, left + gap, w - right - (50 if n_inf else 0))
    cmax = max(int(counts.max()) if counts.size else 0, n_wrong, n_inf, 1)
    cmax_nice, cstep = nice_max(cmax, 5)
    if cstep != int(cstep):  # counts: whole-number ticks only
        cstep = float(math.ceil(cstep))
        cmax_nice = cstep * math.ceil(cmax / cstep)
    sy = Linear(0.0, cmax_nice, h - bottom, top)
    desc = (f"Histogram of certified radii of the {int(correct.sum())} correctly classified samples in {bins} bins "
            f"from 0 to {tick_label(xmax, xstep)}; {n_wrong} misclassified sample(s) counted separately"
            + (f"; {n_inf} with infinite radius" if n_inf else "") + ".")
    out = [svg_open("fig-histogram", w, h, "Histogram of certified radii", desc,
                    data_samples=str(n), data_bins=str(bins))]
    for t in ticks(0.0, cmax_nice, cstep):
        y = sy(t)
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{num(y)}" y2="{num(y)}" stroke="{GRID}"/>')
        out.append(f'<text x="{left - 8}" y="{num(y + 4)}" text-anchor="end">{esc(tick_label(t, cstep))}</text>')
    for t in ticks(0.0, xmax, xstep):
        out.append(f'<text x="{num(sx(t))}" y="{h - bottom + 18}" text-anchor="middle">'
                   f"{esc(tick_label(t, xstep))}</text>")
    base_y = sy(0)

    def bar(x0: float, x1: float, c: int, cls: str, fill: str, label: str, extra: str = "") -> str:
        y = sy(c)
        return (f'<rect class="{cls}" x="{num(x0)}" y="{num(y)}" width="{num(max(x1 - x0, 0.5))}" '
                f'height="{num(base_y - y)}" fill="{fill}" {extra} data-count="{c}"><title>{esc(label)}</title></rect>')

    for i, c in enumerate(counts):
        lo, hi = i * width, (i + 1) * width
        edge = "]" if i == bins - 1 else ")"
        out.append(bar(sx(lo) + 0.5, sx(hi) - 0.5, int(c), "hist-bar", BLUE,
                       f"radius in [{_fmt_r(lo)}, {_fmt_r(hi)}{edge}: {int(c)} sample(s)",
                       attrs(data_lo=repr(lo), data_hi=repr(hi))))
    out.append(bar(left + 12, left + gap - 14, n_wrong, "hist-wrong", GREY,
                   f"misclassified: {n_wrong} sample(s) (no certified radius)"))
    out.append(f'<text x="{left + gap / 2 - 1:.0f}" y="{h - bottom + 18}" text-anchor="middle">wrong</text>')
    if n_inf:
        xi = w - right - 44
        out.append(bar(xi, xi + 36, n_inf, "hist-inf", BLUE, f"infinite radius: {n_inf} sample(s)"))
        out.append(f'<text x="{xi + 18}" y="{h - bottom + 18}" text-anchor="middle">∞</text>')
    out.append(f'<line x1="{left}" x2="{w - right}" y1="{num(base_y)}" y2="{num(base_y)}" stroke="#888"/>')
    out.append(f'<text x="{(left + gap + w - right) / 2:.0f}" y="{h - 14}" text-anchor="middle">'
               "certified L2 radius (correctly classified samples)</text>")
    out.append(f'<text transform="translate(16 {(top + h - bottom) / 2:.0f}) rotate(-90)" text-anchor="middle">'
               "samples</text>")
    out.append("</svg>")
    cap = (f"How far each correctly classified sample is certified (median radius {fmt_lower(d['median_radius'], 4)}, "
           f"mean {fmt_lower(d['mean_radius'], 4)} over all samples, misclassified ones counting 0). "
           "The grey bar counts the misclassified samples, which have no certified radius.")
    return f'<figure>{"".join(out)}<figcaption>{esc(cap)}</figcaption></figure>'


# ------------------------------------------------------------------ figure 3: where the bound comes from
def _is_join(nd: dict[str, Any]) -> bool:
    """A node joining branches reports its output bound, not an own factor (lipgraph.analyze)."""
    return nd.get("op_type") in _JOIN_OPS and nd.get("bound") == nd.get("cumulative") and (
        "branch" in str(nd.get("method", "")) or nd.get("op_type") in {"Sum", "Mean", "Concat"})


def layers_figure(d: dict[str, Any]) -> str:
    nodes = [nd for nd in d["nodes"] if isinstance(nd.get("bound"), int | float)]
    if not nodes:
        return '<p class="muted">No per-node factors in this report.</p>'
    own = [nd for nd in nodes if not _is_join(nd)]
    ranked = sorted((nd for nd in own if nd["bound"] > 1.0), key=lambda nd: -nd["bound"])
    top = {id(nd) for nd in ranked[:_TOP_CONTRIBUTORS]}
    shown = nodes
    hidden = 0
    if len(nodes) > _MAX_LAYER_ROWS:  # keep graph order; drop joins (no factor), then factors closest to 1
        def weight(nd: dict[str, Any]) -> float:
            if _is_join(nd):
                return math.inf
            return -abs(math.log10(nd["bound"])) if nd["bound"] > 0 else -math.inf

        keep = sorted(nodes, key=weight)
        keep_ids = {id(nd) for nd in keep[:_MAX_LAYER_ROWS]} | top
        shown = [nd for nd in nodes if id(nd) in keep_ids]
        hidden = len(nodes) - len(shown)
    # joins carry an output bound, not a factor: they get no bar and do not set the axis
    positive = [nd["bound"] for nd in shown
                if nd["bound"] > 0 and math.isfinite(nd["bound"]) and not _is_join(nd)] + [1.0]
    lo = math.floor(math.log10(min(positive)))
    hi = math.ceil(math.log10(max(positive)))
    if hi == lo:
        hi += 1
    row_h, label_w = 20, 300
    w = 760
    top_m, bottom = 28, 44
    h = top_m + bottom + row_h * len(shown)
    sx = Linear(float(lo), float(hi), label_w, w - 90)
    x1 = sx(0.0)
    desc = (f"Horizontal bars, log scale: the own Lipschitz factor of each of {len(shown)} nodes in graph order. "
            + ("Largest: " + ", ".join(f"{nd['name']} ({nd['op_type']}) {fmt_upper(nd['bound'], 4)}"
                                       for nd in ranked[:_TOP_CONTRIBUTORS]) + "." if ranked else
               "No node has a factor above 1."))
    out = [svg_open("fig-layers", w, h, "Per-node Lipschitz factors (log scale)", desc)]
    for k in range(lo, hi + 1):
        x = sx(float(k))
        out.append(f'<line x1="{num(x)}" x2="{num(x)}" y1="{top_m - 6}" y2="{h - bottom}" '
                   f'stroke="{"#999" if k == 0 else GRID}"/>')
        label = f"{10.0 ** k:g}" if -3 <= k <= 3 else f"1e{k}"
        out.append(f'<text x="{num(x)}" y="{h - bottom + 16}" text-anchor="middle">{esc(label)}</text>')
    out.append(f'<text x="{(label_w + w - 90) / 2:.0f}" y="{h - 10}" text-anchor="middle">'
               "factor (log scale; 1 = leaves the bound unchanged)</text>")
    for i, nd in enumerate(shown):
        y = top_m + i * row_h
        name, op, b = str(nd["name"]), str(nd["op_type"]), float(nd["bound"])
        join = _is_join(nd)
        fill = GREY if join else (RED if id(nd) in top else BLUE)
        xb = sx(math.log10(b)) if b > 0 else sx(float(lo))
        x0, xw = (x1, xb - x1) if xb >= x1 else (xb, x1 - xb)
        tip = (f"{name} ({op}): {'output bound (joins branches)' if join else 'factor'} {fmt_upper(b, 6)}; "
               f"cumulative {fmt_upper(float(nd.get('cumulative', float('nan'))), 6)}; method: {nd.get('method', '')}")
        weight = ' font-weight="600"' if id(nd) in top else ""
        if join:
            mark = (f'<path d="M{num(x1)} {y + 4} l6 6 l-6 6 l-6 -6 Z" fill="{fill}"/>'
                    f'<text x="{num(x1 + 10)}" y="{y + 14}" fill="#555">joins branches (output bound '
                    f"{esc(fmt_upper(b, 4))})</text>")
        else:
            mark = (f'<rect x="{num(x0)}" y="{y + 3}" width="{num(max(xw, 1.0))}" height="{row_h - 6}" '
                    f'fill="{fill}"/><text x="{num(max(xb, x1) + 6)}" y="{y + 14}"{weight}>'
                    f"{esc('×' + fmt_upper(b, 4))}</text>")
        out.append(f'<g class="layer-row" {attrs(data_name=name, data_op=op, data_value=repr(b))}><title>{esc(tip)}'
                   f'</title><text x="{label_w - 8}" y="{y + 14}" text-anchor="end"{weight}>'
                   f"{esc(_short(name, 30))} <tspan fill=\"#555\">{esc(op)}</tspan></text>{mark}</g>")
    out.append("</svg>")
    cap = ("Each node's own factor: for a chain of layers the network bound is at most the product of the "
           "factors, so the longest bars to the right are the layers to fix (shrink their spectral norm). ")
    if ranked:
        cap += "Largest contributors: " + ", ".join(
            f"{nd['name']} ({nd['op_type']}, ×{fmt_upper(nd['bound'], 4)})" for nd in ranked[:_TOP_CONTRIBUTORS]) + ". "
    if any(_is_join(nd) for nd in shown):
        cap += ("Nodes that join branches (Add, Concat, ...) have no factor of their own; the bound of their "
                "output is given instead. ")
    if hidden:
        cap += (f"{hidden} nodes (joins first, then the factors closest to 1) are not drawn; all are in the "
                "table below.")
    return f'<figure>{"".join(out)}<figcaption>{esc(cap.strip())}</figcaption></figure>'


# ------------------------------------------------------------------ tables
