"""Per-sample local bounds in the certificate (``--local-bounds``, lipgraph.local_bounds).

Real exports (torch, both exporters) and real ONNX Runtime sessions: the chain read from the graph is the
torch model's, a radius raised by the local bound is a grid eps or a verified radius between two (bisection)
and survives an L2 PGD attack, ``off`` leaves every radius as it was, models that are not ReLU chains are left
alone with the reason, and the report carries what was done (JSON, text, per sample, and through
`certify --shard` + `lipgraph merge`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from lipgraph.certify import certify
from lipgraph.chain import unfused_graph
from lipgraph.cli import main
from lipgraph.local_bounds import read_chain

torch = pytest.importorskip("torch")
SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
EPS = [0.1, 0.2, 0.3, 0.5]


@pytest.fixture(scope="module")
def off_auto(digits_mlp):
    # per-pair bounds off: the local bound then has more to do, and the tests stay fast
    off = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off", local_bounds="off")
    auto = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off")
    return off, auto


@pytest.fixture(scope="module")
def grid_only(digits_mlp):
    """auto without the bisection: every radius the local bound gives is a grid eps."""
    from lipgraph import local_bisect

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local_bisect, "BISECT_STEPS", 0)
        return certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off")


def test_local_radii_are_grid_values_above_the_lipschitz_ones_and_off_changes_nothing(off_auto, grid_only) -> None:
    off, auto = off_auto[0], grid_only
    assert off.meta["local_bounds"] == {"used": False, "mode": "off"}
    assert off.sample_methods is None
    lb = auto.meta["local_bounds"]
    assert lb["used"] and lb["mode"] == "auto" and lb["hidden"] == [48, 32]
    assert lb["bisection"]["steps"] == 0 and lb["bisection"]["evaluations"] == 0
    local = np.asarray(auto.sample_methods) == "crown-l2"
    assert local.sum() == lb["samples_from_local"] and local.mean() > 0.2, "the local bound should matter"
    assert set(np.unique(auto.radii[local])) <= set(EPS)
    assert np.all(auto.radii[local] > off.radii[local])
    np.testing.assert_array_equal(auto.radii[~local], off.radii[~local])  # untouched elsewhere, bit for bit
    assert np.all(auto.sample_methods[~local] == auto.radius_method)
    for e in EPS:  # never below the Lipschitz certificate, and strictly above it somewhere
        assert auto.certified_at(e) >= off.certified_at(e)
    assert auto.certified_at(0.2) > off.certified_at(0.2)
    # a sample is checked at an eps only while it keeps passing (ascending grid, stop at the first failure)
    checked = [lb["samples_checked"][str(e)] for e in EPS]
    improved = [lb["samples_improved"][str(e)] for e in EPS]
    assert all(i <= c for i, c in zip(improved, checked, strict=True)) and sum(improved) >= local.sum()


def test_bisection_raises_radii_between_grid_points_only(off_auto, grid_only) -> None:
    """Bisection starts at each sample's grid radius and stays below the next eps (the one that failed), so
    certified accuracy at every grid eps is that of the grid search; the median radius rises."""
    off, auto = off_auto
    lb = auto.meta["local_bounds"]["bisection"]
    from lipgraph.local_bisect import BISECT_STEPS

    assert lb["steps"] == BISECT_STEPS > 0 and lb["max_evaluations_per_sample"] == len(EPS) + BISECT_STEPS
    tried = int(np.sum(off.correct & (off.radii < 2.0 * EPS[-1])))  # below the cap: each may be bisected
    # a few steps per sample, plus the bound at the bracket's lower grid point where the grid skipped it, counted
    assert 0 < lb["evaluations"] <= (BISECT_STEPS + 1) * tried
    assert np.all(auto.radii >= grid_only.radii)
    raised = auto.radii > grid_only.radii
    assert raised.sum() == lb["samples_raised"] and raised.mean() > 0.3, "bisection should matter"
    assert np.all(np.asarray(auto.sample_methods)[raised] == "crown-l2")
    grid = np.array(EPS + [2.0 * EPS[-1]])  # above the last eps: the cap
    nxt = grid[np.searchsorted(grid, grid_only.radii[raised], side="right")]
    assert np.all(auto.radii[raised] < nxt), "a radius reached the eps that failed"
    for e in EPS:
        assert auto.certified_at(e) == grid_only.certified_at(e), e
    assert auto.median_radius > grid_only.median_radius


def test_attack_inside_the_local_radii_never_flips(digits_mlp, off_auto) -> None:
    from tests.certify.test_attack import l2_pgd

    _, auto = off_auto
    idx = np.flatnonzero(np.asarray(auto.sample_methods) == "crown-l2")[:150]
    assert len(idx) >= 50
    x = torch.from_numpy(digits_mlp.x[idx])
    t = torch.from_numpy(digits_mlp.y[idx])
    r = torch.from_numpy(auto.radii[idx].astype(np.float32))
    inside = l2_pgd(digits_mlp.model, x, t, 0.999 * r, steps=60, restarts=3)
    assert not inside.any(), f"PGD flipped {int(inside.sum())} samples inside their certified radius"
    outside = l2_pgd(digits_mlp.model, x, t, 4.0 * r, steps=60, restarts=2)
    assert outside.any(), "the attack is too weak to test anything"


def test_both_exporters_give_the_torch_weights(digits_mlp, tmp_path: Path) -> None:
    mods = [m for m in digits_mlp.model if hasattr(m, "weight")]
    dyn = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(digits_mlp.model, (torch.from_numpy(digits_mlp.x[:1]),), str(dyn), dynamo=True)
    for path in (digits_mlp.onnx_path, dyn):
        g = unfused_graph(onnx.load(str(path)), None, (1, *digits_mlp.x.shape[1:]))
        crown = read_chain(g, g.output_name)
        assert crown.alphas == [0.0, 0.0]
        for lay, m in zip(crown.layers, mods, strict=True):
            np.testing.assert_array_equal(lay.w, m.weight.detach().double().numpy())
            np.testing.assert_array_equal(lay.b, m.bias.detach().double().numpy())
            assert not lay.b_err.any()


def test_leaky_relu_chain_exported_by_dynamo_is_bounded_soundly(tmp_path: Path) -> None:
    from tests.certify.test_attack import l2_pgd

    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(16, 12),
        torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(12, 3),
    ).eval()
    x = torch.rand(64, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    path = tmp_path / "leaky.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:1],), str(path), dynamo=True)
    cert = certify(path, x.numpy(), y.numpy(), eps=[0.05, 0.1, 0.2, 0.4], tight_pairs="off")
    lb = cert.meta["local_bounds"]
    assert lb["used"], lb
    idx = np.flatnonzero(np.asarray(cert.sample_methods) == "crown-l2")
    assert len(idx) >= 10
    r = torch.from_numpy(cert.radii[idx].astype(np.float32))
    assert not l2_pgd(model, x[idx], y[idx], 0.999 * r, steps=60, restarts=3).any()


def test_groupsort_and_other_non_chains_are_left_alone() -> None:
    data = np.load(SAMPLES / "digits_test.npz")
    x, y = data["x"][:60], data["y"][:60]
    auto = certify(SAMPLES / "groupsort.onnx", x, y, eps=[0.5])
    off = certify(SAMPLES / "groupsort.onnx", x, y, eps=[0.5], local_bounds="off")
    lb = auto.meta["local_bounds"]
    assert not lb["used"] and "not a chain" in lb["reason"]
    np.testing.assert_array_equal(auto.radii, off.radii)
    assert auto.sample_methods is None


def test_cli_reports_local_bounds_in_json_text_and_per_sample(digits_mlp, tmp_path, capsys) -> None:
    out, text = tmp_path / "r.json", tmp_path / "r.txt"
    # the same run at eps 0.2 (per-pair bounds off, rows per sample), with the given extra options
    base = ["certify", str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--eps", "0.2"]
    base += ["--tight-pairs", "off", "--per-sample", "-q", "-o", f"json={out}"]
    rc = main([*base, "-o", f"text={text}"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    lb = rep["meta"]["local_bounds"]
    assert lb["used"] and lb["samples_from_local"] > 0 and lb["method"].startswith("crown-l2")
    methods = {p["radius_method"] for p in rep["per_sample"]}
    assert methods == {"crown-l2", rep["radius_method"]}
    assert "local bounds" in text.read_text()
    assert f"{lb['bisection']['samples_raised']} between grid eps by bisection" in text.read_text()
    assert lb["bisection"]["samples_raised"] > 0
    assert lb["bisection"]["steps"] == 2  # the default
    rc = main(
        ["certify", str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--local-bounds", "sideways", "-q"]
    )
    assert rc == 2
    # --radius-steps 0: the local radii are grid values again, and no step is counted
    rc = main([*base, "--radius-steps", "0"])
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(out.read_text())
    assert rep["meta"]["local_bounds"]["bisection"]["evaluations"] == 0
    local = [p["radius"] for p in rep["per_sample"] if p["radius_method"] == "crown-l2"]
    assert local and set(local) == {0.2}
    rc = main(["certify", str(digits_mlp.onnx_path), "--data", str(digits_mlp.npz_path), "--radius-steps", "-1", "-q"])
    assert rc == 2


def test_shards_with_local_bounds_merge_into_the_single_run(digits_mlp, tmp_path, capsys) -> None:
    common = [
        "--data",
        str(digits_mlp.npz_path),
        "--eps",
        "0.2",
        "--eps",
        "0.3",
        "--batch-size",
        "64",
        "--tight-pairs",
        "off",
        "-q",
    ]
    single = tmp_path / "single.json"
    assert main(["certify", str(digits_mlp.onnx_path), *common, "--per-sample", "-o", f"json={single}"]) == 0
    parts = []
    for k in (1, 2, 3):
        part = tmp_path / f"part{k}.json"
        assert main(["certify", str(digits_mlp.onnx_path), *common, "--shard", f"{k}/3", "-o", str(part)]) == 0
        parts.append(str(part))
    merged = tmp_path / "merged.json"
    assert main(["merge", *parts, "--format", "json", "-o", str(merged), "--per-sample"]) == 0, capsys.readouterr().err
    a, b = json.loads(single.read_text()), json.loads(merged.read_text())
    for key in ("certified_accuracy", "median_radius", "mean_radius", "per_sample"):
        assert a[key] == b[key], key
    for key in ("samples_checked", "samples_improved", "samples_from_local", "bisection"):
        assert a["meta"]["local_bounds"][key] == b["meta"]["local_bounds"][key], key
    assert a["meta"]["local_bounds"]["bisection"]["samples_raised"] > 0


def test_a_radius_needs_the_bound_above_the_float_allowance() -> None:
    """An affine-on-the-ball net (every unit active) has the exact local bound ``m - r ||a||``; the radius
    is granted exactly when that exceeds ``sqrt(2) (e + d r)`` plus the margin floor, and the grid stops at the
    first eps that fails."""
    from lipgraph.local_bounds import allowance, local_radii
    from lipgraph.norms.crown_l2 import Affine, CrownL2

    w0 = np.array([[1.0, 0.0], [0.0, 1.0]])
    layers = [
        Affine(w0, np.array([10.0, 10.0]), np.zeros(2)),
        Affine(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([-10.0, 0.0]), np.zeros(2)),
    ]
    crown = CrownL2(layers, [0.0])
    x = np.array([[1.0, 0.0]])  # F = (1, 0): margin 1, a = (1, 0), bound at r: 1 - r
    logits = np.array([[1.0, 0.0]])
    target, correct = np.array([0]), np.array([True])
    grid = [0.2, 0.4, 0.6, 0.8]

    def radius(e: float, d: float) -> float:  # the grid alone
        res = local_radii(crown, x, logits, target, correct, np.zeros(1), grid, [(np.array([e]), d)], 1e-5, 0)
        return float(res.radius[0])

    assert radius(0.0, 0.0) == 0.8
    # at r = 0.6 the bound is 0.4: an allowance just above it stops the grid at 0.4, just below passes 0.6
    e_at = (0.4 - 1e-5) / np.sqrt(2.0)
    assert radius(e_at * (1 + 1e-6), 0.0) == 0.4
    assert radius(e_at * (1 - 1e-6), 0.0) == 0.6
    # the slope d counts: at r = 0.8 the bound 0.2 beats sqrt(2) 0.1 * 0.8 but not sqrt(2) 0.2 * 0.8
    assert radius(0.0, 0.1) == 0.8
    assert radius(0.0, 0.2) == 0.6
    # a sample whose radius already reaches an eps is not checked there, and the result never lowers it
    res = local_radii(crown, x, logits, target, correct, np.array([0.5]), grid, [(np.array([0.0]), 0.0)], 1e-5, 0)
    assert float(res.radius[0]) == 0.8 and res.meta["samples_checked"]["0.2"] == 0
    res = local_radii(crown, x, logits, target, correct, np.array([0.9]), grid, [(np.array([0.0]), 0.0)], 1e-5, 0)
    assert float(res.radius[0]) == 0.9 and not res.from_local[0]
    # with bisection, a radius above the grid's last eps is bracketed from that eps up to the cap, as any other:
    # the same radius whatever the sample came with (0.9 or 0.5 here), never below what it came with
    high, low = (
        local_radii(crown, x, logits, target, correct, np.array([r]), grid, [(np.array([0.0]), 0.0)], 1e-5, 3)
        for r in (0.9, 0.5)
    )
    assert float(high.radius[0]) == float(low.radius[0]) > 0.9 and high.from_local[0]
    assert allowance([(np.array([1.0]), 0.5)], logits, 2.0, 0.0)[0] >= np.sqrt(2.0) * 2.0


@pytest.mark.parametrize(
    ("e", "d", "start"), [(0.0, 0.0, 0.0), (0.28, 0.0, 0.0), (0.0, 0.1, 0.0), (0.05, 0.3, 0.25), (0.7, 0.0, 0.0)]
)
def test_bisection_finds_the_exact_radius_within_its_steps(e: float, d: float, start: float) -> None:
    """The same affine-on-the-ball net: its bound ``1 - r`` passes exactly while ``1 - r > sqrt(2) (e + d r) +
    1e-5``, i.e. below ``r* = (1 - sqrt(2) e - 1e-5) / (1 + sqrt(2) d)``. Every reported radius is below ``r*``
    (verified), and within ``gap / 2^steps`` of it, ``gap`` being the bracket the grid (or the cap) left."""
    from lipgraph.local_bounds import local_radii
    from lipgraph.norms.crown_l2 import Affine, CrownL2

    layers = [
        Affine(np.eye(2), np.array([10.0, 10.0]), np.zeros(2)),
        Affine(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([-10.0, 0.0]), np.zeros(2)),
    ]
    crown = CrownL2(layers, [0.0])
    x, logits = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])
    grid = [0.2, 0.4, 0.6, 0.8]
    r_star = (1.0 - np.sqrt(2.0) * e - 1e-5) / (1.0 + np.sqrt(2.0) * d)
    for steps in (0, 1, 4, 7):
        errs = [(np.array([e]), d)]
        res = local_radii(crown, x, logits, np.array([0]), np.array([True]), np.array([start]), grid, errs, 1e-5, steps)
        r = float(res.radius[0])
        assert start <= r < r_star * (1 + 1e-9), (steps, r, r_star)
        lo = max([0.0] + [g for g in grid if g < r_star])  # the grid's radius: the bracket starts there
        hi = min([g for g in grid if g > lo] + [2.0 * grid[-1]])  # the eps that failed, or the cap
        if r_star > lo:
            assert r_star - r <= (hi - lo) / 2**steps * (1 + 1e-9) + 1e-9, (steps, r, r_star, lo, hi)
        assert res.meta["bisection"]["evaluations"] <= steps + (start > 0)  # + the bracket's end the grid skipped


def test_auto_stays_off_above_its_work_cap(digits_mlp, off_auto, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipgraph import local_bounds

    monkeypatch.setattr(local_bounds, "AUTO_MAX_WORK", 1000.0)  # the digits MLP needs ~2e4 per sample and eps
    capped = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off")
    lb = capped.meta["local_bounds"]
    assert not lb["used"] and "multiply-adds" in lb["reason"]
    np.testing.assert_array_equal(capped.radii, off_auto[0].radii)
    # never silently: the report says auto left it and how to run it
    assert any("--local-bounds all" in w for w in capped.warnings), capped.warnings
    # all has no cap: the same radii as auto under the real cap
    everything = certify(
        digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off", local_bounds="all"
    )
    assert everything.meta["local_bounds"]["used"]
    np.testing.assert_array_equal(everything.radii, off_auto[1].radii)


def test_certify_with_a_bound_file_gives_the_same_local_radii(digits_mlp, tmp_path, capsys) -> None:
    bound, a, b = tmp_path / "b.json", tmp_path / "a.json", tmp_path / "c.json"
    assert main(["bound", str(digits_mlp.onnx_path), "--format", "json", "-o", str(bound)]) == 0
    common = [
        str(digits_mlp.onnx_path),
        "--data",
        str(digits_mlp.npz_path),
        "--eps",
        "0.2",
        "--tight-pairs",
        "off",
        "--per-sample",
        "--format",
        "json",
        "-q",
    ]
    assert main(["certify", *common, "-o", str(a)]) == 0
    assert main(["certify", *common, "--bound", str(bound), "-o", str(b)]) == 0, capsys.readouterr().err
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert rb["meta"]["local_bounds"]["used"]
    assert ra["per_sample"] == rb["per_sample"]


@pytest.mark.parametrize(("arch", "dynamo"), [("mlp", False), ("mlp", True), ("cnn", False), ("cnn", True)])
def test_random_net_bound_holds_for_onnx_runtime_in_the_ball(arch: str, dynamo: bool, tmp_path: Path) -> None:
    """The bound read from a real export lies below ONNX Runtime's own margins at points of the ball."""
    import onnxruntime as ort

    nn = torch.nn
    torch.manual_seed(3 + dynamo)
    if arch == "mlp":
        model = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4)).eval()
        shape = (5,)
    else:  # conv layers become dense matrices (the basis pushed through them)
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 4),
        ).eval()
        shape = (1, 6, 6)
    x = torch.rand(16, *shape)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x[:1],),
            str(path),
            dynamo=dynamo,
            input_names=["x"],
            dynamic_axes=None if dynamo else {"x": {0: "N"}},
        )
    proto = onnx.load(str(path))
    g = unfused_graph(proto, None, (1, *shape))
    crown = read_chain(g, g.output_name)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    batch_ok = sess.get_inputs()[0].shape[0] != 1

    def run(pts: np.ndarray) -> np.ndarray:
        pts = pts.astype(np.float32)
        if batch_ok:
            return sess.run(None, {name: pts})[0]
        return np.concatenate([sess.run(None, {name: p[None]})[0] for p in pts])

    xs = x.numpy()
    t = np.argmax(run(xs), axis=1)
    dim = int(np.prod(shape))
    rng = np.random.default_rng(0)
    assert np.mean(np.min(crown.margin_lower_bounds(xs, t, 0.01), axis=1) > 0) > 0.5, "a vacuous bound tests nothing"
    for r in (0.05, 0.3):
        lb = crown.margin_lower_bounds(xs, t, r)
        for i in range(len(xs)):
            d = rng.standard_normal((200, dim))
            d = r * d / np.linalg.norm(d, axis=1, keepdims=True) * rng.uniform(0.5, 1, (200, 1)) ** 0.2
            f = run(xs[i][None] + d.reshape(200, *shape)).astype(np.float64)
            margins = f[:, t[i]][:, None] - f
            margins[:, t[i]] = np.inf  # the bound is +inf there
            assert np.all(lb[i][None] <= margins + 1e-5), (r, i)  # ORT's float32 error is far below 1e-5 here


def test_the_attack_filter_only_saves_work(digits_mlp, off_auto, monkeypatch: pytest.MonkeyPatch) -> None:
    from lipgraph import local_bounds

    _, auto = off_auto
    assert sum(auto.meta["local_bounds"]["samples_refuted_by_attack"].values()) > 0
    monkeypatch.setattr(local_bounds, "refuted", lambda crown, x, *a: np.zeros(len(x), dtype=bool))
    unfiltered = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=EPS, tight_pairs="off")
    np.testing.assert_array_equal(unfiltered.radii, auto.radii)
    assert sum(unfiltered.meta["local_bounds"]["samples_refuted_by_attack"].values()) == 0


def test_batches_of_a_sparse_selection_read_bounded_slices() -> None:
    from lipgraph.local_bounds import CHUNK, SPAN, _chunks

    todo = np.array([0, 1, 2, 50_000, 50_001, 90_000, *range(90_001, 90_300)])
    parts = _chunks(todo)
    np.testing.assert_array_equal(np.concatenate(parts), todo)
    assert all(len(p) <= CHUNK and p[-1] - p[0] < SPAN for p in parts)
    assert _chunks(np.array([], dtype=np.int64)) == []
