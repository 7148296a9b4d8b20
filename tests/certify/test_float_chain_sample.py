"""The per-sample float error bound for (affine, activation) chains (lipgraph.floaterr.chain_sample).

Oracles: ONNX Runtime's float32 logits against the model evaluated in float64 (onnx's reference
evaluator) and in exact rational arithmetic; an independent re-derivation of the running recursion
(so dropping a term of it fails a test); and ONNX Runtime's error at points inside the ball around
x (the slope d). Models are real torch exports, with both exporters.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lipgraph.certify import certify, compute_radii
from lipgraph.floaterr.chain_sample import ChainFloatModel, chain_sample_bound
from lipgraph.floaterr.state import dot_gamma, gamma, schur
from tests.certify.float_nets import run_float64

torch = pytest.importorskip("torch")
nn = torch.nn
U32 = 2.0**-24


def _export(model: nn.Module, sample: torch.Tensor, path: Path, dynamo: bool) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (sample,), str(path), input_names=["x"], output_names=["logits"], dynamo=dynamo)
    return onnx.load(str(path))


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's float32 logits, one sample at a time (the exports have batch size 1)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [np.asarray(sess.run(None, {name: x[i : i + 1]})[0], dtype=np.float64) for i in range(len(x))]
    )


def _f64(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return np.concatenate([run_float64(proto, x[i : i + 1]) for i in range(len(x))])


def _mlp(seed: int, d: int = 12, w: int = 24, k: int = 5, case: str = "random") -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, k))
    with torch.no_grad():
        if case == "cancel":  # a large positive offset keeps every unit active; the next layer takes it off again
            model[0].bias.fill_(300.0)
            model[2].bias.copy_(-(model[2].weight.double() @ model[0].bias.double()).float() + 1.0)
        if case == "near_zero":  # the first layer's pre-activations vanish at x0 = (0.5, ..., 0.5)
            model[0].bias.copy_(-(model[0].weight.double() @ torch.full((d,), 0.5, dtype=torch.float64)).float())
    return model


def _inputs(model: nn.Sequential, case: str, n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if case == "large":
        x *= 3e3
    if case == "sparse":  # mostly exact zeros (like MNIST's background): the bound at x counts fewer terms
        x[rng.random((n, d)) < 0.8] = 0.0
    if case == "near_zero":  # pre-activations of the first layer within float noise of zero
        x = (0.5 + 1e-6 * rng.standard_normal((n, d))).astype(np.float32)
        x[: n // 2] = 0.5
    return x


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("case", ["random", "large", "cancel", "near_zero", "sparse"])
def test_bound_covers_onnx_runtime_on_mlps(tmp_path: Path, dynamo: bool, case: str) -> None:
    d = 12
    model = _mlp(3, d=d, case=case)
    path = tmp_path / "m.onnx"
    proto = _export(model, torch.zeros(1, d), path, dynamo)
    x = _inputs(model, case, 300, d, seed=1)
    b, why = chain_sample_bound(proto, None, (1, d), "logits", x, U32, 0.0)
    assert b is not None, why
    err = np.linalg.norm(_ort(path, x) - _f64(proto, x), axis=1)
    scale = np.max(np.abs(_f64(proto, x)), axis=1)
    assert b.e_x is not None and np.all(b.e_x <= b.e)
    assert np.all(b.e_x >= err + 1e-13 * scale)  # the float64 reference's own error is below 1e-13 relative
    if case == "sparse":
        assert np.mean(b.e_x) < 0.7 * np.mean(b.e)
    assert np.max(err) > 0  # the comparison saw rounding
    if case == "near_zero":
        w1, b1 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
        pre = x.astype(np.float64) @ w1.T + b1
        assert np.min(np.abs(pre)) < 1e-6


@pytest.mark.parametrize("dynamo", [False, True])
def test_bound_covers_onnx_runtime_on_a_conv_chain(tmp_path: Path, dynamo: bool) -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=(0, 1), dilation=(1, 1)),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Linear(6 * 2 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    )
    path = tmp_path / "c.onnx"
    proto = _export(model, torch.zeros(1, 1, 8, 8), path, dynamo)
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.random((150, 1, 8, 8)), 400.0 * rng.standard_normal((50, 1, 8, 8))]).astype(np.float32)
    b, why = chain_sample_bound(proto, None, (1, 1, 8, 8), "logits", x, U32, 0.0)
    assert b is not None, why
    assert b.layers >= 8
    err = np.linalg.norm(_ort(path, x) - _f64(proto, x), axis=1)
    assert b.e_x is not None and np.all(b.e_x >= err * (1 + 1e-9) + 1e-12)
    assert np.max(err) > 0


@pytest.mark.parametrize("dynamo", [False, True])
def test_slope_bounds_the_error_inside_the_ball(tmp_path: Path, dynamo: bool) -> None:
    d = 12
    model = _mlp(7, d=d)
    path = tmp_path / "m.onnx"
    proto = _export(model, torch.zeros(1, d), path, dynamo)
    chain = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0)
    rng = np.random.default_rng(4)
    x = (5.0 * rng.standard_normal((40, d))).astype(np.float32)
    at_x = chain.bound(x)
    for r in (0.1, 3.0, 50.0):
        for _ in range(5):
            v = rng.standard_normal((40, d))
            xp = (x + 0.999 * r * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            moved = np.linalg.norm(xp.astype(np.float64) - x, axis=1)
            allowed = at_x.e + at_x.d * moved
            err = np.linalg.norm(_ort(path, xp) - _f64(proto, xp), axis=1)
            assert np.all(err <= allowed)
            # the bound computed at x' itself stays below it too (it bounds the same quantity, more tightly)
            assert np.all(chain.bound(xp).e <= allowed * (1 + 1e-9))


def _graph(proto: onnx.ModelProto, d: int):
    from lipgraph.chain import unfused_graph

    return unfused_graph(proto, None, (1, d))


def _reference_recursion(
    layers: list[tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    keep_err_term: bool = True,
    matmul_add: bool = False,
    sparse: bool = False,
) -> np.ndarray:
    """e and g written out again from the formula: Gemm layers with bias (or MatMul, then Add of the bias),
    ReLU between."""
    h = x.astype(np.float64)
    e = np.zeros(len(x))
    g = np.zeros(len(x))
    nonzero = np.count_nonzero(h, axis=1) if sparse else np.full(len(x), h.shape[1])
    for i, (w, b) in enumerate(layers):
        # inner products, the bias, alpha/beta (the graph walk's count); a MatMul has no bias. At x, only the
        # products with a nonzero float operand can round (a sum with exact zeros rounds as a shorter sum)
        inner = np.minimum(w.shape[1], nonzero)
        n = w.shape[1] if matmul_add else w.shape[1] + 1 + 2
        gam = np.array([dot_gamma(int(k) if matmul_add else int(k) + 3, U32, 0.0) for k in inner])
        aw = np.abs(w)
        a_norm = schur(aw, aw.sum(axis=1), aw.sum(axis=0))
        f = np.linalg.norm(w, 2)
        terms = np.linalg.norm(np.abs(h) @ aw.T + (0.0 if matmul_add else np.abs(b)), axis=1)
        err_terms = a_norm * (g + e) if keep_err_term else 0.0
        e = f * e + gam * (terms + err_terms)
        g = f * g + gamma(n + 1, 2.0**-53) * terms
        if matmul_add:  # the Add of a constant after an affine op: gamma_{n+3} of the terms behind it
            big_n = np.linalg.norm(np.abs(h) @ aw.T + np.abs(b), axis=1)
            e = e + np.array([gamma(int(k) + 3, U32) for k in inner]) * (big_n + err_terms)
            g = g + gamma(2, 2.0**-53) * np.linalg.norm(np.abs(h @ w.T) + np.abs(b), axis=1)
        h = h @ w.T + b
        if i < len(layers) - 1:
            # a float pre-activation below zero for sure: real value + g below -e
            nonzero = np.count_nonzero(h + (g + e)[:, None] >= 0, axis=1) if sparse else np.full(len(x), h.shape[1])
            h = np.maximum(h, 0.0)
    return e


def test_the_recursion_keeps_every_term(tmp_path: Path) -> None:
    d = 12
    model = _mlp(11, d=d, case="cancel")
    proto = _export(model, torch.zeros(1, d), tmp_path / "m.onnx", False)
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model
        if isinstance(m, nn.Linear)
    ]
    x = _inputs(model, "large", 50, d, seed=3)
    got = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0).bound(x).e
    want = _reference_recursion(layers, x)
    without = _reference_recursion(layers, x, keep_err_term=False)
    assert np.all(without < want * (1 - 1e-8))  # the |err_k| term is visible at this tolerance
    assert np.all(got >= want * (1 - 1e-10))
    assert np.all(got <= want * (1 + 1e-4))  # the same bound, only the rule's spectral norm and roundings above
    # TF32's operand rounding is a parameter of every dot product's gamma
    tf32 = ChainFloatModel(_graph(proto, d), "logits", U32, 2.0**-11).bound(x).e
    assert np.all(tf32 > 100 * got)


def test_the_bound_at_x_counts_the_terms_that_can_round(tmp_path: Path) -> None:
    """Zeros of x and surely-inactive units shorten the sums; units within the error of zero still count."""
    d = 12
    model = _mlp(17, d=d, case="near_zero")
    proto = _export(model, torch.zeros(1, d), tmp_path / "m.onnx", False)
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model
        if isinstance(m, nn.Linear)
    ]
    x = _inputs(model, "near_zero", 60, d, seed=8)
    x[::3, ::2] = 0.0
    bound = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0).bound(x)
    want = _reference_recursion(layers, x, sparse=True)
    dense = _reference_recursion(layers, x)
    assert bound.e_x is not None
    assert np.all(bound.e_x >= want * (1 - 1e-10)) and np.all(bound.e_x <= want * (1 + 1e-4))
    assert np.all(bound.e >= dense * (1 - 1e-10)) and np.mean(bound.e_x) < 0.9 * np.mean(bound.e)
    # the margin of the activation test matters here: counting only units with a positive real value is less
    pre = x.astype(np.float64) @ layers[0][0].T + layers[0][1]
    assert np.any((pre < 0) & (pre > -1e-5))


class _ExplicitAffine(nn.Module):
    """``x @ W.T + b`` written out, so both exporters emit MatMul then Add."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.w = nn.Parameter(lin.weight.detach().clone())
        self.b = nn.Parameter(lin.bias.detach().clone())

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.w.T + self.b


@pytest.mark.parametrize("dynamo", [False, True])
def test_matmul_then_add_charges_the_add(tmp_path: Path, dynamo: bool) -> None:
    d = 12
    base = _mlp(13, d=d, case="cancel")
    model = nn.Sequential(*[_ExplicitAffine(m) if isinstance(m, nn.Linear) else m for m in base])
    path = tmp_path / "m.onnx"
    proto = _export(model, torch.zeros(1, d), path, dynamo)
    ops = {n.op_type for n in proto.graph.node}
    assert "MatMul" in ops and "Add" in ops and "Gemm" not in ops, ops
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in base if isinstance(m, nn.Linear)
    ]
    x = _inputs(base, "large", 50, d, seed=5)
    bound = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0).bound(x)
    got = bound.e
    want = _reference_recursion(layers, x, matmul_add=True)
    assert np.all(got >= want * (1 - 1e-10))
    assert np.all(got <= want * (1 + 1e-4))
    err = np.linalg.norm(_ort(path, x) - _f64(proto, x), axis=1)
    assert bound.e_x is not None and np.all(bound.e_x >= err * (1 + 1e-9))
    x[::2, 1::2] = 0.0  # zeros shorten the MatMul's sums at x, and so the Add's count behind them
    bound = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0).bound(x)
    want_x = _reference_recursion(layers, x, matmul_add=True, sparse=True)
    assert bound.e_x is not None and np.all(bound.e_x >= want_x * (1 - 1e-10))
    assert np.all(bound.e_x <= want_x * (1 + 1e-4))


def _exact_logits(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> list[list[Fraction]]:
    out = []
    for row in x:
        h = [Fraction(float(v)) for v in row]
        for i, (w, b) in enumerate(layers):
            h = [
                sum((Fraction(float(wij)) * hj for wij, hj in zip(wr, h, strict=True)), Fraction(float(bi)))
                for wr, bi in zip(w, b, strict=True)
            ]
            if i < len(layers) - 1:
                h = [max(v, Fraction(0)) for v in h]
        out.append(h)
    return out


def test_the_float64_pass_is_covered_against_exact_arithmetic(tmp_path: Path) -> None:
    """With offsets of 1e9 the float64 forward pass itself is off by ~1e-7: g must cover it."""
    d = 6
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(1e9)
        model[2].bias.copy_(-(model[2].weight.double() @ model[0].bias.double()).float())
    proto = _export(model, torch.zeros(1, d), tmp_path / "m.onnx", False)
    layers = [
        (m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
        for m in model
        if isinstance(m, nn.Linear)
    ]
    x = np.random.default_rng(0).standard_normal((20, d)).astype(np.float32)
    b = ChainFloatModel(_graph(proto, d), "logits", U32, 0.0).bound(x, keep_logits=True)
    assert b.g is not None and b.logits64 is not None
    exact = _exact_logits(layers, x)
    worst = 0.0
    for i in range(len(x)):
        diff = [Fraction(float(v)) - t for v, t in zip(b.logits64[i], exact[i], strict=True)]
        dist = math.sqrt(float(sum(v * v for v in diff)))
        worst = max(worst, dist / b.g[i])
        assert dist <= b.g[i]
    assert worst > 1e-6, "float64 made no measurable error: the test would pass without the allowance"


def test_compute_radii_takes_the_better_candidate_per_sample() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((200, 6)) * 3
    labels = np.argmax(logits + rng.standard_normal((200, 6)), axis=1)
    e1, e2 = rng.random(200) * 0.3, rng.random(200) * 0.3
    one = compute_radii(logits, labels, 4.0, (), e1, 0.05)
    two = compute_radii(logits, labels, 4.0, (), e2, 0.2)
    both = compute_radii(logits, labels, 4.0, (), e1, 0.05, [(e2, 0.2)])
    np.testing.assert_array_equal(both.radius, np.maximum(one.radius, two.radius))
    assert both.float_error_choice is not None and set(np.unique(both.float_error_choice)) == {0, 1}
    # a bound valid at x only (e_x <= e) replaces one of the two e's: never a smaller radius, and e_x = e
    # gives exactly the pair's radius
    e_x = e2 * rng.random(200)
    split = compute_radii(logits, labels, 4.0, (), e1, 10.0, [(e2, 0.2, e_x)])
    same = compute_radii(logits, labels, 4.0, (), e1, 10.0, [(e2, 0.2, e2)])
    assert np.all(split.radius >= same.radius) and np.any(split.radius > same.radius)
    old = compute_radii(logits, labels, 4.0, (), e1, 10.0)
    np.testing.assert_allclose(same.radius, np.maximum(old.radius, two.radius), rtol=1e-13)  # e + e: one ulp up


def test_certify_uses_it_on_a_chain_and_leaves_other_models_alone(tmp_path: Path) -> None:
    d = 12
    model = _mlp(3, d=d)
    path = tmp_path / "m.onnx"
    _export(model, torch.zeros(1, d), path, True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, d)).astype(np.float32)
    y = np.argmax(_ort(path, x), axis=1)
    cert = certify(str(path), x, y, eps=[0.1], tight_pairs="off")
    info = cert.meta["float_error"]["per_sample_chain"]
    assert info["used"] and info["samples_used"] > 0
    assert info["max_over_samples"] < cert.meta["float_error"]["max_over_samples"]

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(d, d), nn.Linear(d, 5)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.b(v + torch.relu(self.a(v)))

    torch.manual_seed(0)
    rpath = tmp_path / "r.onnx"
    _export(Residual(), torch.zeros(1, d), rpath, True)
    rc = certify(str(rpath), x, None, eps=[0.1], tight_pairs="off")
    rinfo = rc.meta["float_error"]["per_sample_chain"]
    assert not rinfo["used"] and "feeds 2 nodes" in rinfo["reason"]
    # unchanged: the same certificate as with the per-sample bound switched off
    import lipgraph.floaterr.chain_sample as cs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cs, "chain_float", lambda *a, **k: cs.ChainFloat(None, "switched off"))
        before = certify(str(rpath), x, None, eps=[0.1], tight_pairs="off")
        chain_off = certify(str(path), x, y, eps=[0.1], tight_pairs="off")
    np.testing.assert_array_equal(rc.radii, before.radii)
    assert rc.certified_accuracy == before.certified_accuracy
    # on the chain, every radius is at least the walk's alone, and some are larger
    assert np.all(cert.radii >= chain_off.radii) and np.any(cert.radii > chain_off.radii)
