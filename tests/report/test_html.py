"""The HTML certify report through the CLI: structure, and every number against the JSON report.

The model is a small MLP (scikit-learn's MLPClassifier on the digits, written out with onnx.helper) whose
first node is named ``<script>alert(1)</script>``. Oracles: the JSON report of the same run (with
``--per-sample``); the figures are read back from the SVG (path commands mapped back to data
coordinates) and compared with the step function recomputed from the per-sample radii.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.cli import main
from lipgraph.numbers import percent_down

EVIL = "<script>alert(1)</script>"
ODD = 'a&b "quoted" \'x\' <i>'
EPS = ["0.05", "0.1", "0.2"]


# ------------------------------------------------------------------ a tiny DOM (stdlib html.parser)
_VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class El:
    def __init__(self, tag: str, attrs: dict[str, str], parent: El | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[El] = []
        self.text_parts: list[str] = []

    def text(self) -> str:
        return "".join(self.text_parts) + "".join(c.text() for c in self.children)

    def iter(self):  # noqa: ANN201
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, cls: str | None = None) -> list[El]:
        return [e for e in self.iter() if e.tag == tag and (cls is None or cls in e.attrs.get("class", "").split())]

    def by_id(self, id_: str) -> El:
        hits = [e for e in self.iter() if e.attrs.get("id") == id_]
        assert len(hits) == 1, f"id {id_!r}: {len(hits)} elements"
        return hits[0]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = El("#root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = El(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(el)
        if tag not in _VOID:
            self.cur = el

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(El(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        self.cur = self.cur.parent  # type: ignore[assignment]

    def handle_data(self, data: str) -> None:
        self.cur.text_parts.append(data)


def parse(text: str) -> El:
    b = _Builder()
    b.feed(text)
    b.close()
    assert b.cur is b.root, "unclosed elements"
    return b.root


# ------------------------------------------------------------------ reading a figure back
def _plot_map(svg: El):  # noqa: ANN202
    left, top, width, height = (float(v) for v in svg.attrs["data-plot"].split())
    xmax = float(svg.attrs["data-xmax"])
    return (lambda px: (px - left) / width * xmax), (lambda py: (top + height - py) / height)


def step_segments(svg: El, d: str) -> list[tuple[float, float, float]]:
    """Horizontal segments (r0, r1, acc) of an ``M x y H.. V..`` path, in data coordinates."""
    to_r, to_a = _plot_map(svg)
    toks = re.findall(r"([MHV])\s*([-\d.]+)(?:\s+([-\d.]+))?", d)
    assert toks and toks[0][0] == "M", d
    x, y = float(toks[0][1]), float(toks[0][2])
    segs = []
    for cmd, a, _ in toks[1:]:
        if cmd == "H":
            segs.append((to_r(x), to_r(float(a)), to_a(y)))
            x = float(a)
        else:
            assert float(a) >= y, "a certified-accuracy curve never rises"
            y = float(a)
    return segs


def path_start(svg: El, d: str) -> tuple[float, float]:
    """The (radius, accuracy) where a step path starts: (0, acc(0))."""
    to_r, to_a = _plot_map(svg)
    m = re.match(r"M\s*([-\d.]+)\s+([-\d.]+)", d)
    assert m, d
    return to_r(float(m.group(1))), to_a(float(m.group(2)))


def value_at(segs: list[tuple[float, float, float]], r: float) -> float:
    for r0, r1, acc in segs:
        if r0 - 1e-9 <= r <= r1 + 1e-9:
            return acc  # the first (leftmost, higher) segment at a jump: acc(r) counts radius >= r
    raise AssertionError(f"radius {r} outside the curve")


def oracle_acc(per_sample: list[dict], r: float) -> float:
    ok = [s["radius"] >= r and (s["label"] is None or s["label"] == s["prediction"]) for s in per_sample]
    return sum(ok) / len(per_sample)


# ------------------------------------------------------------------ fixtures
def _model(path: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    with warnings.catch_warnings():  # not converging fully is fine: any classifier will do
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(24,), max_iter=150, alpha=1e-2, random_state=0)
        clf.fit(x[:600], d.target[:600])  # the report's samples are held out: some are misclassified
    w1, w2 = (np.asarray(w, np.float32) for w in clf.coefs_)
    b1, b2 = (np.asarray(b, np.float32) for b in clf.intercepts_)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name=EVIL),
        helper.make_node("Relu", ["h"], ["r"], name=ODD),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], name="head"),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _certify(*args: str) -> int:
    return main(["certify", *args, "-q"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("html")
    model = folder / "mlp.onnx"
    _model(model)
    d = load_digits()
    npz = folder / "data.npz"
    np.savez(npz, x=(d.data[-60:] / 16.0).astype(np.float32), y=d.target[-60:])
    eps = [a for e in EPS for a in ("--eps", e)]
    # a baseline of another run (the first 25 samples), with per-sample radii; and one with only its points
    base_ps = folder / "base_ps.json"
    assert _certify(str(model), "--data", str(npz), "--limit", "25", *eps, "--per-sample", "--format", "json",
                    "-o", str(base_ps)) == 0
    base_doc = json.loads(base_ps.read_text())
    base_pts = folder / "base_pts.json"
    base_pts.write_text(json.dumps({k: v for k, v in base_doc.items() if k != "per_sample"}))
    cur = json.loads(base_ps.read_text())  # for the gates: one passes, one fails
    ok_acc = cur["certified_accuracy"]["0.05"]
    gates = ["--min-certified-accuracy", "0.05=0.0", "--min-certified-accuracy", "0.2=1.0", "--exit-zero"]
    out: dict = {"folder": folder, "model": model, "npz": npz, "base_ps": base_doc, "ok_acc": ok_acc}
    for name, base in (("ps", base_ps), ("pts", base_pts)):
        common = [str(model), "--data", str(npz), *eps, *gates, "--baseline", str(base), "--max-drop", "0.5"]
        html = folder / f"report_{name}.html"
        js = folder / f"report_{name}.json"
        assert _certify(*common, "--format", "html", "-o", str(html)) == 0
        assert _certify(*common, "--format", "json", "--per-sample", "-o", str(js)) == 0
        out[name] = {"text": html.read_text(encoding="utf-8"), "json": json.loads(js.read_text())}
        out[name]["dom"] = parse(out[name]["text"])
    return out


# ------------------------------------------------------------------ tests
def test_curve_is_the_exact_step_function(run) -> None:
    dom, rep = run["ps"]["dom"], run["ps"]["json"]
    svg = dom.by_id("fig-accuracy")
    assert svg.tag == "svg" and svg.attrs.get("role") == "img"
    for ref in svg.attrs["aria-labelledby"].split():  # accessible name and description exist
        assert dom.by_id(ref).text().strip()
    curves = svg.find_all("path", "curve")
    assert len(curves) == 1
    segs = step_segments(svg, curves[0].attrs["d"])
    tol = 0.6 / float(svg.attrs["data-plot"].split()[3])  # 0.01 px rounding plus one pixel of slack
    per = rep["per_sample"]
    r0, acc0 = path_start(svg, curves[0].attrs["d"])  # at radius 0: the clean accuracy
    assert r0 == pytest.approx(0.0, abs=1e-9) and acc0 == pytest.approx(rep["clean_accuracy"], abs=tol)
    for k, v in rep["certified_accuracy"].items():
        assert value_at(segs, float(k)) == pytest.approx(v, abs=tol)
    # between the jumps, at radii away from any sample's radius: the oracle from the per-sample radii
    radii = sorted({s["radius"] for s in per})
    mids = [(a + b) / 2 for a, b in zip(radii, radii[1:], strict=False)] + [radii[-1] * 1.01 + 1e-6]
    for r in mids:
        assert value_at(segs, r) == pytest.approx(oracle_acc(per, r), abs=tol), r
    # the plot reaches past the largest radius, where the curve is 0
    assert float(svg.attrs["data-xmax"]) >= max(radii)
    # the dots at each eps carry the JSON's numbers exactly
    dots = {float(c.attrs["data-eps"]): float(c.attrs["data-acc"]) for c in svg.find_all("circle", "eps-point")}
    assert dots == {float(k): v for k, v in rep["certified_accuracy"].items()}
    assert max(dots) < float(svg.attrs["data-xmax"]) and min(dots.values()) > 0  # all inside the range


def test_numbers_equal_the_json_report(run) -> None:
    dom, rep = run["ps"]["dom"], run["ps"]["json"]
    el = dom.by_id("lipschitz-bound")
    assert float(el.parent.attrs["data-value"]) == rep["lipschitz_bound"]
    shown = float(el.text())
    assert shown >= rep["lipschitz_bound"] and shown == pytest.approx(rep["lipschitz_bound"], rel=1e-7)
    card = dom.by_id("card-bound").find_all("div", "v")[0]
    assert float(card.attrs["data-value"]) == rep["lipschitz_bound"] and float(card.text()) >= rep["lipschitz_bound"]
    clean = dom.by_id("clean-row").find_all("td", "n")[0]
    assert float(clean.attrs["data-value"]) == rep["clean_accuracy"]
    assert clean.text() == percent_down(rep['clean_accuracy'])
    rows = dom.by_id("eps-table").find_all("tr", "eps-row")
    assert [float(r.attrs["data-eps"]) for r in rows] == sorted(float(k) for k in rep["certified_accuracy"])
    for r in rows:
        cell = r.find_all("td", "n")[0]
        v = rep["certified_accuracy"][r.attrs["data-eps"]]
        assert float(cell.attrs["data-value"]) == v and cell.text() == percent_down(v)
    assert rep["meta"]["model_sha256"] == dom.by_id("model-sha256").text()
    assert rep["meta"]["versions"]["lipgraph"] in run["ps"]["text"]
    assert rep["meta"]["provider"] in run["ps"]["text"]


def test_gate_markers_and_rows_follow_the_status(run) -> None:
    dom, rep = run["ps"]["dom"], run["ps"]["json"]
    gates = rep["gates"]
    assert {g["passed"] for g in gates} == {True, False}  # the fixture has one of each at least
    svg = dom.by_id("fig-accuracy")
    markers = [e for e in svg.iter() if "gate" in e.attrs.get("class", "").split()]
    on_plane = [g for g in gates if g["kind"] in ("min-certified-accuracy", "max-drop", "min-clean-accuracy")]
    assert len(markers) == len(on_plane)
    for m, g in zip(markers, on_plane, strict=True):
        assert m.attrs["data-passed"] == ("true" if g["passed"] else "false")
        assert ("gate-pass" if g["passed"] else "gate-fail") in m.attrs["class"].split()
        colour = m.attrs["data-colour"]
        assert colour == ("#007A5A" if g["passed"] else "#C0392B")
        painted = m.attrs.get("fill") if g["passed"] else "".join(c.attrs.get("stroke", "") for c in m.children)
        assert colour in painted
        if g["kind"] == "min-certified-accuracy":
            assert float(m.attrs["data-eps"]) == g["eps"] and float(m.attrs["data-threshold"]) == g["threshold"]
        if g["kind"] == "max-drop":
            assert float(m.attrs["data-threshold"]) == pytest.approx(max(0.0, g["baseline"] - g["threshold"]))
    rows = dom.by_id("gates-table").find_all("tr", "gate-row")
    assert [r.attrs["data-passed"] == "true" for r in rows] == [g["passed"] for g in gates]
    verdict = dom.by_id("verdict")
    assert "fail" in verdict.attrs["class"].split() and "failed" in verdict.text()


def test_baseline_curve_with_per_sample_radii(run) -> None:
    dom = run["ps"]["dom"]
    base = run["base_ps"]
    svg = dom.by_id("fig-accuracy")
    paths = svg.find_all("path", "baseline-curve")
    assert len(paths) == 1
    segs = step_segments(svg, paths[0].attrs["d"])
    tol = 0.6 / float(svg.attrs["data-plot"].split()[3])
    per = base["per_sample"]
    radii = sorted({s["radius"] for s in per})
    for r in [0.0] + [(a + b) / 2 for a, b in zip(radii, radii[1:], strict=False)]:
        assert value_at(segs, r) == pytest.approx(oracle_acc(per, r), abs=tol)
    pts = {float(p.attrs["data-eps"]): float(p.attrs["data-acc"]) for p in svg.find_all("rect", "baseline-point")}
    assert pts == {float(k): v for k, v in base["certified_accuracy"].items()}


def test_baseline_with_points_only(run) -> None:
    dom = run["pts"]["dom"]
    svg = dom.by_id("fig-accuracy")
    assert not svg.find_all("path", "baseline-curve")  # no step curve is invented
    assert len(svg.find_all("polyline", "baseline-curve")) == 1
    pts = {float(p.attrs["data-eps"]): float(p.attrs["data-acc"]) for p in svg.find_all("rect", "baseline-point")}
    assert pts == {float(k): v for k, v in run["base_ps"]["certified_accuracy"].items()}
    assert "not data" in svg.parent.text()  # the caption says the joining line is a guide


def test_histogram_counts(run) -> None:
    dom, rep = run["ps"]["dom"], run["ps"]["json"]
    svg = dom.by_id("fig-histogram")
    per = rep["per_sample"]
    wrong = [s for s in per if s["label"] != s["prediction"]]
    assert wrong, "the fixture's held-out samples should include misclassified ones"
    bars = svg.find_all("rect", "hist-bar")
    assert len(bars) == int(svg.attrs["data-bins"])
    assert int(svg.find_all("rect", "hist-wrong")[0].attrs["data-count"]) == len(wrong)
    assert sum(int(b.attrs["data-count"]) for b in bars) + len(wrong) == rep["samples"]
    right = [s["radius"] for s in per if s["label"] == s["prediction"]]
    for i, b in enumerate(bars):
        lo, hi = float(b.attrs["data-lo"]), float(b.attrs["data-hi"])
        last = i == len(bars) - 1
        want = sum(lo <= r < hi or (last and r == hi) for r in right)
        assert int(b.attrs["data-count"]) == want


def test_layer_factors_and_escaping(run) -> None:
    dom, rep, text = run["ps"]["dom"], run["ps"]["json"], run["ps"]["text"]
    svg = dom.by_id("fig-layers")
    rows = svg.find_all("g", "layer-row")
    assert [r.attrs["data-name"] for r in rows] == [n["name"] for n in rep["nodes"]]
    assert [float(r.attrs["data-value"]) for r in rows] == [n["bound"] for n in rep["nodes"]]
    largest = max(rep["nodes"], key=lambda n: n["bound"])
    assert largest["bound"] > 1 and "Largest contributors: " + largest["name"] in svg.parent.text()
    # the node names reach the page only escaped: no script element, the text shows them literally
    assert EVIL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert ODD not in text
    assert not dom.find_all("script") and not dom.find_all("i")
    assert any(EVIL in e.text() for e in dom.find_all("code"))  # the nodes table, read back as text
    assert any(e.attrs.get("data-name") == ODD for e in rows)


@pytest.mark.parametrize("which", ["ps", "pts"])
def test_self_contained(run, which: str) -> None:
    text = run[which]["text"]
    dom = run[which]["dom"]
    assert not re.search(r"https?:", text, re.IGNORECASE)
    assert not re.search(r"(src|href)\s*=", text, re.IGNORECASE)
    assert "@import" not in text and "url(" not in text
    assert not dom.find_all("script") and not dom.find_all("link") and not dom.find_all("iframe")
    assert text.startswith("<!DOCTYPE html>") and dom.find_all("html")[0].attrs.get("lang") == "en"
    for svg in dom.find_all("svg"):
        assert svg.attrs.get("role") == "img" and svg.attrs.get("aria-labelledby")


def test_without_labels(run, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    npz = tmp_path / "nolabels.npz"
    np.savez(npz, x=(load_digits().data[:20] / 16.0).astype(np.float32))
    out = tmp_path / "r.html"
    assert _certify(str(run["model"]), "--data", str(npz), "--format", "html", "-o", str(out)) == 0
    dom = parse(out.read_text(encoding="utf-8"))
    svg = dom.by_id("fig-accuracy")
    segs = step_segments(svg, svg.find_all("path", "curve")[0].attrs["d"])
    assert path_start(svg, svg.find_all("path", "curve")[0].attrs["d"])[1] == pytest.approx(1.0)  # own targets
    assert segs[0][2] <= 1.0
    assert "certified fraction" in svg.text() and "no labels" in dom.by_id("warnings").text()
    # default eps grid: the ones past the largest radius (accuracy 0) are named, not drawn
    xmax = float(svg.attrs["data-xmax"])
    dots = {float(c.attrs["data-eps"]) for c in svg.find_all("circle", "eps-point")}
    radii = [r1 for _, r1, acc in segs if acc > 0]
    assert xmax >= max(radii) and all(e <= xmax for e in dots)
    rows = {float(r.attrs["data-eps"]): float(r.find_all("td", "n")[0].attrs["data-value"])
            for r in dom.by_id("eps-table").find_all("tr", "eps-row")}
    for e, acc in rows.items():
        if e not in dots:
            assert e > xmax and acc == 0 and f"{e:g}" in svg.parent.find_all("figcaption")[0].text()
    assert "none" in dom.by_id("verdict").attrs["class"].split()


def test_many_nodes_and_infinite_radii() -> None:
    """The renderer on a synthetic certificate: row selection of a big graph, radii certified everywhere."""
    from lipgraph.certify import Certificate
    from lipgraph.report.html import render_certificate

    rng = np.random.default_rng(1)
    n = 40
    correct = rng.random(n) > 0.25
    radii = np.where(correct, np.abs(rng.normal(0.3, 0.2, n)), 0.0)
    radii[np.flatnonzero(correct)[:3]] = np.inf
    factors = np.exp(rng.normal(0.0, 2.0, 150))
    nodes = [{"name": f"n{i}", "op_type": "Add" if i % 4 == 0 else "Conv", "bound": float(f),
              "cumulative": float(f) if i % 4 == 0 else 3.0, "method": "sum of 2 branches" if i % 4 == 0 else "svd"}
             for i, f in enumerate(factors)]
    acc = {"0.1": float(np.mean(correct & (radii >= 0.1)))}
    cert = Certificate(lipschitz_bound=2.0, samples=n, clean_accuracy=float(correct.mean()), certified_accuracy=acc,
                       median_radius=0.0, mean_radius=0.0, radius_method="global", nodes=nodes, meta={"model": "m"},
                       eps=[0.1], radii=radii, predictions=np.zeros(n, int), labels=np.zeros(n, int), correct=correct)
    dom = parse(render_certificate(cert))
    rows = dom.by_id("fig-layers").find_all("g", "layer-row")
    convs = [nd for nd in nodes if nd["op_type"] == "Conv"]
    want = sorted(convs, key=lambda nd: -abs(math.log10(nd["bound"])))[:60]
    assert [r.attrs["data-name"] for r in rows] == [nd["name"] for nd in nodes if nd in want]  # graph order
    svg = dom.by_id("fig-accuracy")
    segs = step_segments(svg, svg.find_all("path", "curve")[0].attrs["d"])
    assert segs[-1][2] == pytest.approx(3 / n, abs=1e-3)  # certified at every radius: the curve never reaches 0
    hist = dom.by_id("fig-histogram")
    assert int(hist.find_all("rect", "hist-inf")[0].attrs["data-count"]) == 3
    bars = sum(int(b.attrs["data-count"]) for b in hist.find_all("rect", "hist-bar"))
    assert bars + 3 + int(hist.find_all("rect", "hist-wrong")[0].attrs["data-count"]) == n
