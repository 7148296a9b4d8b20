"""Per-class-pair network bounds in the certificate (``--tight-pairs``, lipgraph.pairs / lipgraph.chain).

Real exports (torch, both exporters) and real ONNX Runtime sessions; soundness by attack (L2 PGD
inside every certified radius flips nothing), never worse than the last-layer form, near-misses of
the chain pattern fall back to the other bounds, and rejected multipliers change nothing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze
from lipgraph.certify import certify
from lipgraph.chain import NotAChain, extract_chain, unfused_graph
from lipgraph.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture(scope="module")
def both(digits_mlp):
    off = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="off")
    auto = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    return off, auto


def test_tight_pairs_never_lower_a_radius_and_raise_some(both) -> None:
    off, auto = both
    assert np.all(auto.radii >= off.radii)
    assert np.mean(auto.radii > off.radii * 1.05) > 0.2, "the network bound should matter on many samples"
    pb = auto.meta["pair_bounds"]
    assert pb["used"] and pb["chain"]["hidden"] == [48, 32] and pb["chain"]["activations"] == ["Relu", "Relu"]
    methods = {p["method"] for p in pb["pairs"]}
    assert "lipsdp-neuron" in methods
    assert len(pb["pairs"]) == 45
    for p in pb["pairs"]:
        assert p["bound"] <= p["cheap_bound"]
    assert off.meta["pair_bounds"] == {"used": False, "mode": "off"}


def test_attack_inside_the_tighter_radii_never_flips(digits_mlp, both) -> None:
    torch = pytest.importorskip("torch")
    from tests.certify.test_attack import l2_pgd

    _, auto = both
    idx = np.flatnonzero(auto.radii > 0)[:150]
    assert len(idx) >= 50
    x = torch.from_numpy(digits_mlp.x[idx])
    t = torch.from_numpy(digits_mlp.y[idx])
    r = torch.from_numpy(auto.radii[idx].astype(np.float32))
    inside = l2_pgd(digits_mlp.model, x, t, 0.999 * r, steps=60, restarts=3)
    assert not inside.any(), f"PGD flipped {int(inside.sum())} samples inside their certified radius"
    outside = l2_pgd(digits_mlp.model, x, t, 3.0 * r, steps=60, restarts=2)
    assert outside.any(), "the attack is too weak to test anything"


def test_both_exporters_give_the_same_chain(digits_mlp, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    weights = [m.weight.detach().double().numpy() for m in digits_mlp.model if hasattr(m, "weight")]
    paths = {"legacy": digits_mlp.onnx_path}
    dyn = tmp_path / "dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(digits_mlp.model, (torch.from_numpy(digits_mlp.x[:1]),), str(dyn), dynamo=True)
    paths["dynamo"] = dyn
    for name, path in paths.items():
        g = unfused_graph(onnx.load(str(path)), None, (1, *digits_mlp.x.shape[1:]))
        chain = extract_chain(g, g.output_name)
        got = [*chain.weights.hidden, chain.weights.last]
        assert len(got) == 3, name
        for g, w in zip(got, weights, strict=True):
            np.testing.assert_array_equal(g, w)


def test_groupsort_sample_is_unchanged() -> None:
    data = np.load(SAMPLES / "digits_test.npz")
    off = certify(SAMPLES / "groupsort.onnx", data["x"], data["y"], eps=[0.5], tight_pairs="off")
    auto = certify(SAMPLES / "groupsort.onnx", data["x"], data["y"], eps=[0.5], tight_pairs="auto")
    np.testing.assert_array_equal(off.radii, auto.radii)
    assert auto.meta["pair_bounds"]["used"] is False
    assert "MaxMin" in auto.meta["pair_bounds"]["reason"]


def test_rejected_multipliers_leave_the_certificate_as_it_was(digits_mlp, both, monkeypatch) -> None:
    from lipgraph.norms import lipsdp

    real = lipsdp.fast_candidate

    def too_small(prep, rec, i, j, slack=1e-7):
        rho, t = real(prep, rec, i, j, slack)
        return rho * 0.3, t

    monkeypatch.setattr(lipsdp, "fast_candidate", too_small)
    off, _ = both
    cert = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    pb = cert.meta["pair_bounds"]
    assert pb["rejected_candidates"] > 0
    assert {p["method"] for p in pb["pairs"]} == {"last-layer"}
    np.testing.assert_array_equal(cert.radii, off.radii)


# ---- chain near-misses (hand-built graphs): they must not be treated as chains -------------------


def _mlp_model(
    act: str = "Relu",
    act_attrs: dict | None = None,
    residual: bool = False,
    branch: bool = False,
    final_act: bool = False,
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((6, 6)).astype(np.float32)
    w2 = rng.standard_normal((6, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["z1"]),
        helper.make_node(act, ["z1"], ["h1"], **(act_attrs or {})),
    ]
    last_in = "h1"
    if residual:
        nodes.append(helper.make_node("Add", ["h1", "x"], ["r1"]))
        last_in = "r1"
    if branch:
        nodes.append(helper.make_node("Relu", ["z1"], ["h1b"]))
        nodes.append(helper.make_node("Sub", ["h1", "h1b"], ["r1"]))
        last_in = "r1"
    out = "logits"
    nodes.append(helper.make_node("MatMul", [last_in, "w2"], ["pre" if final_act else out]))
    if final_act:
        nodes.append(helper.make_node("Relu", ["pre"], [out]))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 3])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_a_plain_hand_built_chain_is_recognised() -> None:
    a = analyze(_mlp_model())
    chain = extract_chain(a.graph, a.logits_name)
    assert chain.weights.sizes == [6]


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"residual": True}, "feeds 2 nodes"),
        ({"branch": True}, "feeds 2 nodes"),
        ({"final_act": True}, "activation"),
        ({"act": "LeakyRelu", "act_attrs": {"alpha": 2.0}}, "LeakyRelu"),
        ({"act": "Abs"}, "Abs"),
    ],
)
def test_near_misses_are_not_chains_and_certify_falls_back(kwargs: dict, why: str) -> None:
    model = _mlp_model(**kwargs)
    a = analyze(model)
    with pytest.raises(NotAChain, match=why):
        extract_chain(a.graph, a.logits_name)
    x = np.random.default_rng(1).uniform(0, 1, (40, 6)).astype(np.float32)
    off = certify(model, x, None, eps=[0.01], tight_pairs="off")
    auto = certify(model, x, None, eps=[0.01], tight_pairs="auto")
    np.testing.assert_array_equal(off.radii, auto.radii)
    assert auto.meta["pair_bounds"]["used"] is False


def test_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = SAMPLES / "digits_test.npz"
    rc = main(["certify", str(SAMPLES / "lmt.onnx"), "--data", str(data), "--tight-pairs", "soon", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "--tight-pairs" in err and "Traceback" not in err
    rc = main(["certify", str(SAMPLES / "lmt.onnx"), "--data", str(data), "--tight-pairs", "-1", "-q"])
    assert rc == 2
    out = tmp_path / "r.json"
    rc = main(
        [
            "certify",
            str(SAMPLES / "lmt.onnx"),
            "--data",
            str(data),
            "--limit",
            "60",
            "--tight-pairs",
            "0.5",
            "--format",
            "json",
            "-o",
            str(out),
            "-q",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    pb = json.loads(out.read_text())["meta"]["pair_bounds"]
    assert pb["used"] and pb["mode"] == "0.5s"
    assert pb["pairs_total"] == 45 and pb["pairs_solved"] >= 1


def test_auto_skips_refinement_above_the_hidden_size_limit(digits_mlp, both, monkeypatch) -> None:
    import lipgraph.pairs as pairs

    monkeypatch.setattr(pairs, "AUTO_REFINE_MAX_HIDDEN", 10)
    off, auto = both
    cert = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    methods = {p["method"] for p in cert.meta["pair_bounds"]["pairs"]}
    assert "lipsdp-neuron" not in methods and "eclipse-fast" in methods
    assert np.all(cert.radii >= off.radii) and np.all(cert.radii <= auto.radii)


def test_auto_is_reproducible_across_thread_counts_and_reuses_its_work(digits_mlp, both, monkeypatch) -> None:
    from threadpoolctl import threadpool_limits

    import lipgraph.pairs as pairs
    from lipgraph.norms import lipsdp_refine

    _, auto = both
    monkeypatch.setattr(pairs, "_CACHE", {})  # recompute everything, this time under a 2-thread BLAS
    with threadpool_limits(2):
        again = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    np.testing.assert_array_equal(again.radii, auto.radii)
    assert again.meta["pair_bounds"]["pairs"] == auto.meta["pair_bounds"]["pairs"]
    # a second certify of the same model in this process reuses every refined pair: the same bounds, no solve
    calls = []
    real = lipsdp_refine.refine_pair
    monkeypatch.setattr(lipsdp_refine, "refine_pair", lambda *a, **k: calls.append(a[2:4]) or real(*a, **k))
    third = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    assert calls == []
    np.testing.assert_array_equal(third.radii, auto.radii)
    # fewer samples: the deciding pairs are a subset, all remembered, and each keeps its bound
    part = certify(digits_mlp.onnx_path, digits_mlp.x[:40], digits_mlp.y[:40], eps=[0.1], tight_pairs="auto")
    assert calls == []
    full = {tuple(p["classes"]): p["bound"] for p in auto.meta["pair_bounds"]["pairs"]}
    for p in part.meta["pair_bounds"]["pairs"]:
        if p["method"] == "lipsdp-neuron":
            assert p["bound"] == full[tuple(p["classes"])]


def test_auto_work_cap_keeps_the_remaining_pairs_fast_and_says_so(digits_mlp, both, monkeypatch) -> None:
    import lipgraph.pairs as pairs

    monkeypatch.setattr(pairs, "AUTO_MAX_REFINED_PAIRS", 3)
    off, auto = both
    cert = certify(digits_mlp.onnx_path, digits_mlp.x, digits_mlp.y, eps=[0.1, 0.2], tight_pairs="auto")
    pb = cert.meta["pair_bounds"]
    assert pb["work_capped"] is True and auto.meta["pair_bounds"]["work_capped"] is False
    assert pb["pairs_by_method"].get("lipsdp-neuron", 0) <= 3
    assert pb["pairs_by_method"].get("eclipse-fast", 0) >= 1
    assert np.all(cert.radii >= off.radii) and np.all(cert.radii <= auto.radii)
