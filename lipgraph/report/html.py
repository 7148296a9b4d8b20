"""`lipgraph certify --format html`: one self-contained HTML file (inline SVG, inline CSS, no script).

Views of the same numbers as the JSON report (``Certificate.to_json()``); the two figures built from
per-sample radii use the certificate's radii (the JSON holds them only with ``--per-sample``):

1. certified accuracy against the L2 radius: the exact step function
   ``acc(r) = #{i : correct_i and radius_i >= r} / N`` (clean accuracy at r = 0), the accuracy at
   each reported eps marked on it, the gates drawn as markers (green = passed, red = failed) and,
   with ``--baseline``, the baseline's curve (its own step function when the baseline report has
   ``per_sample``, otherwise the points it reports);
2. a histogram of the certified radii of correctly classified samples (misclassified samples counted
   separately);
3. each node's own factor on a log scale, the largest contributors to the bound named.

Every string that comes from the model, the data or the configuration is escaped (``html.escape``).
Numbers carry their exact value in ``data-value`` attributes so that tests (and scripts) can check
them against the JSON report. The printed Lipschitz bound is rounded up (``fmt_upper``).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from lipgraph.numbers import exact, percent_down, percent_exact, percent_up, round_up
from lipgraph.report.certify import gate_detail
from lipgraph.report.html_figures import accuracy_figure, histogram_figure, layers_figure, pct
from lipgraph.report.svg import esc
from lipgraph.report.tables import fmt_float, fmt_lower, fmt_upper

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1a1a1a; background: #fff; margin: 0; }
main { max-width: 1000px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 1.5em; margin: 0 0 4px; } h2 { font-size: 1.2em; margin: 32px 0 8px; }
.sub { color: #444; margin: 0 0 16px; word-break: break-all; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: 600; color: #fff; }
.pass { background: #007A5A; } .fail { background: #C0392B; } .none { background: #555; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card .k { color: #444; font-size: .85em; } .card .v { font-size: 1.35em; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
td.ok, td.bad { white-space: nowrap; font-weight: 600; } td.ok { color: #007A5A; } td.bad { color: #C0392B; }
.kv th { width: 190px; background: none; font-weight: 600; } .kv td { word-break: break-all; }
figure { margin: 8px 0 20px; } figcaption { color: #333; font-size: .92em; max-width: 860px; }
svg { max-width: 100%; height: auto; font-family: inherit; }
svg text { fill: #1a1a1a; font-size: 12px; }
ul.warn li { margin: 4px 0; } .muted { color: #555; }
details summary { cursor: pointer; margin: 8px 0; }
code { background: #f2f2f2; padding: 0 3px; border-radius: 3px; word-break: break-all; }
"""


def _num_cell(value: float | None, text: str, cls: str = "n") -> str:
    dv = "" if value is None else f' data-value="{esc(repr(float(value)))}"'
    return f'<td class="{cls}"{dv}>{esc(text)}</td>'


def _kv_table(rows: list[tuple[str, str, float | None]]) -> str:
    body = []
    for k, v, val in rows:
        dv = "" if val is None else f' data-value="{esc(repr(float(val)))}"'
        body.append(f'<tr><th scope="row">{esc(k)}</th><td{dv}>{v}</td></tr>')
    return f'<table class="kv">{"".join(body)}</table>'


def _summary(d: dict[str, Any]) -> str:
    m = d["meta"]
    data = m.get("data") or {}
    versions = m.get("versions") or {}
    tail = m.get("tail")
    rows: list[tuple[str, str, float | None]] = [
        ("model", f'<code id="model-path">{esc(m.get("model", ""))}</code>', None),
        ("sha256", f'<code id="model-sha256">{esc(m.get("model_sha256", ""))}</code>', None),
        ("opset / producer", esc(f"{m.get('opset')} / {m.get('producer') or '-'}"), None),
        ("input → logits",
         esc(f"{m.get('input')} {m.get('input_shape')} → {m.get('certified_tensor', m.get('logits'))}"), None),
        ("Lipschitz bound (L2)", f'<span id="lipschitz-bound">{esc(fmt_upper(d["lipschitz_bound"], 8))}</span> '
         '<span class="muted">(rounded up)</span>', d["lipschitz_bound"]),
        ("radius method", esc(d["radius_method"] + (
            f" (affine tail: {', '.join(map(str, tail.get('ops') or []))}, L_h {fmt_upper(tail['l_h'], 6)})"
            if isinstance(tail, dict) and "l_h" in tail else "")), None),
        ("data", esc(f"{data.get('source', '')} ({d['samples']} samples, x key {data.get('x_key')}, "
                     f"y key {data.get('y_key')}, range [{fmt_float(data.get('input_min'), 4)}, "
                     f"{fmt_float(data.get('input_max'), 4)}])"), None),
        ("median / mean radius", esc(f"{fmt_lower(d['median_radius'], 4)} / {fmt_lower(d['mean_radius'], 4)}"), None),
        ("provider", esc(f"{m.get('provider')} (batch size {m.get('batch_size')})"), None),
        ("time", esc(f"bound {m.get('time_bound_s', 0):.3f} s (beside inference; waited "
                     f"{m.get('time_bound_wait_s', 0):.3f} s), inference {m.get('time_inference_s', 0):.3f} s, "
                     f"total {m.get('time_total_s', 0):.3f} s"), None),
        ("versions", esc(", ".join(f"{k} {v}" for k, v in versions.items())), None),
    ]
    if m.get("config"):
        rows.append(("gates from", f"<code>{esc(m['config'])}</code>", None))
    if d.get("baseline"):
        rows.append(("baseline", f"<code>{esc(d['baseline'].get('path', ''))}</code>", None))
    rows.append(("float allowance", esc(m.get("float_allowance", "")), None))
    return _kv_table(rows)


def _eps_table(d: dict[str, Any]) -> str:
    base = (d.get("baseline") or {}).get("certified_accuracy") or {}
    head = ("<tr><th>eps</th><th>certified accuracy</th>" + ("<th>baseline</th><th>change</th>" if base else "")
            + "</tr>")
    body = []
    if d["clean_accuracy"] is not None:
        body.append(f'<tr id="clean-row"><td>0 (clean)</td>{_num_cell(d["clean_accuracy"], pct(d["clean_accuracy"]))}'
                    + ("<td></td><td></td>" if base else "") + "</tr>")
    for k, v in sorted(d["certified_accuracy"].items(), key=lambda kv: float(kv[0])):
        row = f'<tr class="eps-row" data-eps="{esc(k)}"><td>{esc(f"{float(k):g}")}</td>{_num_cell(v, pct(v))}'
        if base:
            b = next((bv for bk, bv in base.items() if float(bk) == float(k)), None)
            row += _num_cell(b, pct(b) if b is not None else "-")
            row += _num_cell(None, f"{100 * (v - b):+.2f} pt" if b is not None else "-")
        body.append(row + "</tr>")
    return f'<table id="eps-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _gates_table(d: dict[str, Any]) -> str:
    if not d["gates"]:
        return '<p class="muted">No gates configured (see <code>--min-certified-accuracy</code>).</p>'
    body = []
    for g in d["gates"]:
        ok = bool(g["passed"])
        actual = g.get("actual")
        body.append(
            f'<tr class="gate-row {"gate-pass" if ok else "gate-fail"}" data-passed="{"true" if ok else "false"}">'
            f'<td class="{"ok" if ok else "bad"}">{"✓ PASS" if ok else "✗ FAIL"}</td><td>{esc(g.get("name", ""))}</td>'
            f'{_num_cell(actual, _gate_value(g, actual, is_actual=True))}'
            f'{_num_cell(g.get("threshold"), _gate_value(g, g.get("threshold"), is_actual=False))}'
            f'<td>{esc(gate_detail(g) if "message" in g else "")}</td></tr>')
    return ('<table id="gates-table"><thead><tr><th>result</th><th>gate</th><th>actual</th><th>threshold</th>'
            f'<th>detail</th></tr></thead><tbody>{"".join(body)}</tbody></table>')


def _gate_value(g: dict[str, Any], x: float | None, is_actual: bool) -> str:
    """A gate's number as the rest of the report prints it: accuracies as percentages (rounded down),
    drops in percentage points (rounded up), bounds rounded up; thresholds exactly as given."""
    if x is None:
        return "-"
    kind = g.get("kind")
    if kind in ("min-certified-accuracy", "min-clean-accuracy"):
        return percent_down(x) if is_actual else percent_exact(x)
    if kind == "max-drop":  # a drop in accuracy, in percentage points
        return (percent_up(x) if is_actual else percent_exact(x)).replace("%", " pp")
    return round_up(x, 8) if is_actual else exact(x)


def _nodes_table(d: dict[str, Any]) -> str:
    body = [
        f'<tr><td><code>{esc(nd.get("name", ""))}</code></td><td>{esc(nd.get("op_type", ""))}</td>'
        f'<td>{esc(nd.get("method", ""))}</td>{_num_cell(nd.get("bound"), fmt_upper(nd.get("bound"), 6))}'
        f'{_num_cell(nd.get("cumulative"), fmt_upper(nd.get("cumulative"), 6))}</tr>'
        for nd in d["nodes"]
    ]
    return (f'<details><summary>All {len(d["nodes"])} nodes (factor and cumulative bound)</summary>'
            '<table id="nodes-table"><thead><tr><th>node</th><th>op</th><th>method</th><th>factor</th>'
            f'<th>cumulative</th></tr></thead><tbody>{"".join(body)}</tbody></table></details>')


# ------------------------------------------------------------------ the page
def render_certificate(cert: Any) -> str:
    """The whole report as one HTML document (a string)."""
    d = cert.to_json()
    m = d["meta"]
    if not d["gates"]:
        verdict, cls = "no gates configured", "none"
    elif d["passed"]:
        verdict, cls = "all gates passed", "pass"
    else:
        failed = sum(not g["passed"] for g in d["gates"])
        verdict, cls = f"{failed} of {len(d['gates'])} gates failed", "fail"
    model = str(m.get("model", "model"))
    cards = [("Lipschitz bound (L2)", fmt_upper(d["lipschitz_bound"], 6), "card-bound", d["lipschitz_bound"]),
             ("clean accuracy", pct(d["clean_accuracy"]) if d["clean_accuracy"] is not None else "n/a",
              "card-clean", d["clean_accuracy"]),
             ("samples", str(d["samples"]), "card-samples", d["samples"])]
    cards += [(f"certified @ ε={float(k):g}", pct(v), None, v)
              for k, v in sorted(d["certified_accuracy"].items(), key=lambda kv: float(kv[0]))]
    card_html = "".join(
        f'<div class="card"{f" id={chr(34)}{cid}{chr(34)}" if cid else ""}><div class="k">{esc(k)}</div>'
        f'<div class="v"{"" if val is None else f" data-value={chr(34)}{esc(repr(float(val)))}{chr(34)}"}>'
        f"{esc(v)}</div></div>"
        for k, v, cid, val in cards)
    warnings = d["warnings"]
    warn_html = ("<ul class=\"warn\" id=\"warnings\">" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
                 if warnings else '<p class="muted" id="warnings">No warnings.</p>')
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    version = (m.get("versions") or {}).get("lipgraph", "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lipgraph certify: {esc(Path(model).name)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<h1>lipgraph certify <span class="badge {cls}" id="verdict">{esc(verdict)}</span></h1>',
        f'<p class="sub">{esc(model)} · {d["samples"]} samples · {esc(when)}</p>',
        f'<section aria-label="key numbers" class="cards">{card_html}</section>',
        "<h2>Certified accuracy against radius</h2>",
        accuracy_figure(d, cert),
        "<h2>Certified accuracy and gates</h2>",
        _eps_table(d),
        _gates_table(d),
        "<h2>Distribution of certified radii</h2>",
        histogram_figure(d, cert),
        "<h2>Where the Lipschitz bound comes from</h2>",
        layers_figure(d),
        _nodes_table(d),
        "<h2>Warnings</h2>",
        warn_html,
        "<h2>Run</h2>",
        _summary(d),
        f'<p class="muted">Generated by lipgraph {esc(version)}. This file is self-contained: no scripts, '
        "no network access.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


render_html = render_certificate
