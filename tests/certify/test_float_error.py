"""The float allowance is a proven bound on ONNX Runtime's float32 logits' error (issue 15, class 7).

Oracles: the real network in float64 (exactly affine nets: ``x A + b``; other nets: onnx's reference
evaluator on a float64 copy), ONNX Runtime's own float32 outputs, and for affine nets the exact
worst-case perturbation (the strongest possible attack) inside 0.999 r.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lipgraph.analyze import analyze
from lipgraph.certify import certify, compute_radii
from lipgraph.errors import LipgraphError
from lipgraph.floaterr import TF32_UNIT_ROUNDOFF, float_error_model
from lipgraph.tail import find_tail
from tests.certify.float_nets import cancelling_gemms, run_float64


def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {m.graph.input[0].name: x})[0].astype(np.float64)


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1)


def _data(n: int = 400, d: int = 16, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, d)).astype(np.float32), rng.integers(0, 10, n)


def _worst_case_flips(
    m: onnx.ModelProto, a: np.ndarray, b: np.ndarray, x: np.ndarray, target: np.ndarray, radii: np.ndarray
) -> tuple[int, int, int]:
    """(certified, real-network flips, ONNX Runtime flips) under the exact worst-case L2 attack at 0.999 r.

    For an affine real network the margin to class i falls fastest along ``-(a_t - a_i)``: each
    certified sample is attacked in every such direction.
    """
    cert = np.flatnonzero(radii > 0)
    real_flips, ort_flips, points, owners = 0, 0, [], []
    for s in cert:
        t = int(target[s])
        if int(np.argmax(x[s].astype(np.float64) @ a + b)) != t:
            real_flips += 1  # certified, but the real network misclassifies the point itself
            continue
        for i in range(a.shape[1]):
            if i == t:
                continue
            d = a[:, t] - a[:, i]
            xp = (x[s].astype(np.float64) - 0.999 * radii[s] * d / np.linalg.norm(d)).astype(np.float32)
            if np.linalg.norm(xp.astype(np.float64) - x[s]) > radii[s]:
                continue  # float32 rounding left the ball (never for these radii)
            if int(np.argmax(xp.astype(np.float64) @ a + b)) != t:
                real_flips += 1
            points.append(xp)
            owners.append(t)
    if points:
        f = _ort(m, np.stack(points))
        ort_flips = int(np.sum(np.argmax(f, axis=1) != np.array(owners)))
    return len(cert), real_flips, ort_flips


def test_issue_net_error_exceeds_the_old_allowance_and_stays_within_the_bound() -> None:
    m, (a, b) = cancelling_gemms(2.0**17)
    x, _ = _data()
    f32 = _ort(m, x)
    err = np.linalg.norm(f32 - (x.astype(np.float64) @ a + b), axis=1)
    old = 1e-5 * np.abs(f32).max(axis=1)
    assert np.sum(err > old) > 100, "the reproduction: float32 error far above 1e-5 * max|logit|"
    bound = float_error_model(m, None, (1, 16)).at(_norms(x))
    assert np.all(err <= bound), f"worst ratio {np.max(err / bound):.3g}"


def test_the_old_allowance_certified_flips_that_the_bound_prevents() -> None:
    m, (a, b) = cancelling_gemms(2.0**17)
    x, y = _data()
    an = analyze(m, input_shape=(1, 16))
    tails = find_tail(an.graph, an.logits_name, an.tensor_bounds)
    f32 = _ort(m, x)
    old = compute_radii(f32, y, an.bound, tails)  # the former allowance, 1e-5 * max|logit|
    _, real_old, ort_old = _worst_case_flips(m, a, b, x, y, old.radius)
    assert real_old > 0 and ort_old > 0, "the test must see the hole the old allowance left"
    cert = certify(m, x, y)
    assert cert.meta["float_error"]["method"].startswith("a-priori running error bound")
    _, real_new, ort_new = _worst_case_flips(m, a, b, x, y, cert.radii)
    assert (real_new, ort_new) == (0, 0)


@pytest.mark.parametrize("offset", [2.0**12, 2.0**8, 0.0])
def test_certified_radii_hold_for_the_real_network_and_for_onnx_runtime(offset: float) -> None:
    m, (a, b) = cancelling_gemms(offset, seed=3)
    x, _ = _data(200, seed=4)
    y = np.argmax(x.astype(np.float64) @ a + b, axis=1)  # labels the real network mostly gets right
    y[::7] = (y[::7] + 1) % 10  # and some it gets wrong
    cert = certify(m, x, y, eps=[0.0])
    n_cert, real_flips, ort_flips = _worst_case_flips(m, a, b, x, y, cert.radii)
    assert (real_flips, ort_flips) == (0, 0)
    if offset <= 2.0**8:
        assert n_cert > 100, "a mildly conditioned net still certifies most samples"


def test_an_ill_conditioned_net_gets_smaller_radii_than_its_well_conditioned_twin() -> None:
    x, _ = _data(200, seed=5)
    ill, (a_ill, b_ill) = cancelling_gemms(2.0**12, seed=6)
    well, (a_well, _) = cancelling_gemms(0.0, seed=6)
    np.testing.assert_array_equal(a_ill, a_well)  # the same linear part: the twins differ only in float behaviour
    y = np.argmax(x.astype(np.float64) @ a_ill + b_ill, axis=1)
    r_ill = certify(ill, x, y).radii
    r_well = certify(well, x, y).radii
    assert np.mean(r_ill) < 0.9 * np.mean(r_well)
    assert np.all(r_ill <= r_well + 1e-3)
    err_ill = certify(ill, x, y).meta["float_error"]["max_over_samples"]
    err_well = certify(well, x, y).meta["float_error"]["max_over_samples"]
    assert err_ill > 100 * err_well


def _mixed_cnn(rng: np.random.Generator, offset: float) -> onnx.ModelProto:
    """Conv(+large bias) -> BN -> Relu -> MaxPool, a residual Add, Sigmoid/Tanh, AveragePool, Concat, Gemm."""
    f = np.float32

    def init(name: str, v: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(v, dtype=f), name)

    inits = [
        init("k1", rng.normal(size=(4, 2, 3, 3)) / 3),
        init("c1", rng.choice([-1, 1], 4) * offset),
        init("g", rng.uniform(0.5, 2, 4)),
        init("be", rng.normal(size=4)),
        init("mu", rng.choice([-1, 1], 4) * offset),
        init("va", rng.uniform(0.5, 2, 4)),
        init("k2", rng.normal(size=(4, 4, 3, 3)) / 6),
        init("sc", [0.5]),
        init("w", rng.normal(size=(10, 32)) / 6),
        init("bw", rng.normal(size=10)),
        numpy_helper.from_array(np.array([1, 32], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "k1", "c1"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a1", "g", "be", "mu", "va"], ["a2"]),
        helper.make_node("Relu", ["a2"], ["a3"]),
        helper.make_node("Conv", ["a3", "k2"], ["a4"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a3", "a4"], ["a5"]),
        helper.make_node("MaxPool", ["a5"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["a5"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Sigmoid", ["p1"], ["s1"]),
        helper.make_node("Mul", ["p2", "sc"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["s3"]),
        helper.make_node("Concat", ["s1", "s3"], ["cat"], axis=1),
        helper.make_node("Identity", ["cat"], ["sl"]),
        helper.make_node("AveragePool", ["sl"], ["p3"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p3", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "bw"], ["y"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("offset", [0.0, 2.0**10])
def test_bound_covers_onnx_runtime_on_mixed_ops(offset: float) -> None:
    rng = np.random.default_rng(7)
    m = _mixed_cnn(rng, offset)
    xs = [rng.normal(size=(1, 2, 8, 8)).astype(np.float32) * s for s in (0.1, 1.0, 10.0) for _ in range(8)]
    em = float_error_model(m, None, (1, 2, 8, 8))
    worst = 0.0
    for x in xs:
        err = float(np.linalg.norm(_ort(m, x) - run_float64(m, x)))
        bound = float(em.at(_norms(x))[0])
        assert err <= bound
        worst = max(worst, err / bound)
    assert worst > 0, "the oracle saw float32 rounding (a zero error would test nothing)"


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_cnn_with_batchnorm_is_bounded(tmp_path, dynamo: bool) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 16, 10),
    ).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-50, 50)  # large shifts that the BN removes again
        net[0].bias.uniform_(-50, 50)
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(
                net,
                (torch.zeros(2, 1, 8, 8),),
                str(path),
                dynamo=True,
                input_names=["x"],
                dynamic_shapes=({0: torch.export.Dim("N")},),
                verbose=False,
            )
        else:
            torch.onnx.export(
                net, torch.zeros(1, 1, 8, 8), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}}
            )
    m = onnx.load(str(path))
    x = np.random.default_rng(8).random((64, 1, 8, 8)).astype(np.float32)
    err = np.linalg.norm(_ort(m, x) - run_float64(m, x), axis=1)
    bound = float_error_model(m, None, (1, 1, 8, 8)).at(_norms(x))
    assert np.all(err <= bound)


def _tf32(v: np.ndarray) -> np.ndarray:
    """Round float32 values to TF32 (10 explicit mantissa bits), to nearest."""
    bits = np.asarray(v, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + (1 << 12)) & ~np.uint64((1 << 13) - 1)
    return bits.astype(np.uint32).view(np.float32)


def test_tf32_operand_rounding_is_a_parameter() -> None:
    m, (a, b) = cancelling_gemms(2.0**6, seed=9)
    x, _ = _data(200, seed=10)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    h = (_tf32(x) @ _tf32(consts["w1"])).astype(np.float32) + consts["b1"]
    f = (_tf32(h) @ _tf32(consts["w2"])).astype(np.float32) + consts["b2"]
    err = np.linalg.norm(f.astype(np.float64) - (x.astype(np.float64) @ a + b), axis=1)
    fp32 = float_error_model(m, None, (1, 16)).at(_norms(x))
    tf32 = float_error_model(m, None, (1, 16), dot_operand_roundoff=TF32_UNIT_ROUNDOFF).at(_norms(x))
    assert np.any(err > fp32), "TF32 errors exceed the float32 bound, so the parameter matters"
    assert np.all(err <= tf32)


def test_an_op_without_a_float_error_model_is_refused_clearly() -> None:
    rng = np.random.default_rng(11)
    g = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "g"], ["n"], axis=-1),
            helper.make_node("Gemm", ["n", "w"], ["y"]),
        ],
        "layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.ones(4, np.float32), "g"),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert math.isfinite(analyze(m).bound)
    with pytest.raises(LipgraphError, match="float-error model for LayerNormalization"):
        certify(m, rng.random((5, 4)).astype(np.float32))


def test_constant_pieces_of_a_concat_count_as_magnitude() -> None:
    """Concat(x, big constant) -> Gemm: the constant's size drives the Gemm's rounding."""
    rng = np.random.default_rng(12)
    w = rng.normal(size=(20, 10)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Concat", ["x", "c"], ["h"], axis=1), helper.make_node("Gemm", ["h", "w"], ["y"])],
        "concat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(np.full((1, 16), 2.0**14, np.float32), "c"), numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.normal(size=(32, 4)).astype(np.float32)
    err = np.array([np.linalg.norm(_ort(m, x[i : i + 1]) - run_float64(m, x[i : i + 1])) for i in range(len(x))])
    bound = float_error_model(m, None, (1, 4)).at(_norms(x))
    assert np.all(err <= bound)
    assert np.max(err) > 1e-4, "the constant makes the error visible"


@pytest.mark.parametrize(
    "attrs,scales",
    [
        (dict(mode="linear"), [1, 1, 2.0, 1.5]),
        (dict(mode="linear", coordinate_transformation_mode="align_corners"), [1, 1, 0.6, 1.7]),
        (dict(mode="nearest"), [1, 1, 2.0, 0.5]),
    ],
)
def test_resize_then_gemm_is_bounded(attrs: dict, scales: list[float]) -> None:
    rng = np.random.default_rng(13)
    shape = [1, 2, 5, 4]
    out = [int(np.floor(d * s)) for d, s in zip(shape, scales, strict=True)]
    k = int(np.prod(out))
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], **attrs),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(scales, np.float32), "scales"),
        numpy_helper.from_array(np.array([1, k], np.int64), "shape"),
        numpy_helper.from_array(rng.normal(size=(k, 5)).astype(np.float32), "w"),
    ]
    g = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    em = float_error_model(m, None, tuple(shape))
    for s in (1e-2, 1.0, 1e3):
        x = (rng.normal(size=shape) * s + 1e3).astype(np.float32)
        assert np.linalg.norm(_ort(m, x) - run_float64(m, x)) <= em.at(_norms(x))[0]


OFFSET = 2.0**6


def test_pgd_in_float64_and_in_onnx_runtime_flips_nothing_inside_the_radius(tmp_path) -> None:
    """A ReLU net whose middle layer cancels a 2^6 offset: PGD (L2, float64) at 0.999 r, checked in
    float64 and in ONNX Runtime. An end-to-end check of a nonlinear net; that the attacks can see a too
    small allowance is shown on the cancelling Gemm pair above (here the float error is small against
    the margins, so even no allowance would pass)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).double().eval()
    with torch.no_grad():
        net[0].bias.fill_(OFFSET)  # ReLU passes everything; the next layer removes the offset again
        net[2].bias.copy_(-(net[2].weight @ net[0].bias) + 0.1 * torch.randn(32, dtype=torch.float64))
        for layer in (net[0], net[2], net[4]):  # the float32 weights the ONNX model holds are the real network
            layer.weight.copy_(layer.weight.float().double())
            layer.bias.copy_(layer.bias.float().double())
    path = tmp_path / "relu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.float(), torch.zeros(1, 16), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "N"}}
        )
    net.double()
    m = onnx.load(str(path))
    rng = np.random.default_rng(14)
    x = rng.random((200, 16)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x.astype(np.float64))).argmax(1).numpy()
    cert = certify(m, x, y, eps=[0.0])
    idx = np.flatnonzero(cert.radii > 0)
    assert len(idx) > 20, "some samples are certified, or the attack tests nothing"
    x0 = torch.from_numpy(x[idx].astype(np.float64))
    r = torch.from_numpy(0.999 * cert.radii[idx])[:, None]
    t = torch.from_numpy(y[idx])
    delta = torch.zeros_like(x0, requires_grad=True)
    for _ in range(40):  # L2 PGD on the margin, projected onto the ball of radius 0.999 r
        out = net(x0 + delta)
        other = out.clone()
        other[torch.arange(len(t)), t] = -torch.inf
        margin = out[torch.arange(len(t)), t] - other.max(1).values
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
            delta -= 0.25 * r * step
            delta *= torch.clamp(r / delta.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1.0)
    with torch.no_grad():
        xa = x0 + delta
        assert torch.all(xa.sub(x0).norm(dim=1) <= r[:, 0] * (1 + 1e-12))
        assert torch.equal(net(xa).argmax(1), t), "PGD flipped the real network inside 0.999 r"
    xa32 = xa.detach().numpy().astype(np.float32)
    inside = np.linalg.norm(xa32.astype(np.float64) - x[idx], axis=1) <= cert.radii[idx]
    assert np.all(np.argmax(_ort(m, xa32), axis=1)[inside] == y[idx][inside]), "ONNX Runtime flipped inside r"
