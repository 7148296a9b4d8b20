"""Adversarial review of the structured conv local bound (lipgraph.norms.crown_conv): geometry edge cases.

Hand-built ONNX graphs (onnx.helper: the only way to get asymmetric pads, auto_pad, a (C, 1, 1) bias added
by Add, a Sub of a constant map and a Gemm with or without transB in one chain) run by real ONNX Runtime
sessions. For each geometry the structured bound must equal the dense form's (every layer a matrix, built
from the per-sample float model's own convolution, input norms taken directly) to ~1e-9, give the same
numbers with its row blocks split into tiny pieces, equal ONNX Runtime's margin at the sample itself (r = 0:
the bounded network is the one ONNX Runtime runs, pads and auto_pad SAME included) and stay below ONNX
Runtime's margins at random points and at L2 PGD points of the ball (gradients from the dense matrices:
independent of the patches code).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as onh

from lipgraph.chain import unfused_graph
from lipgraph.local_bounds import read_chain
from lipgraph.norms import crown_conv
from lipgraph.norms.crown_conv import CrownConv
from lipgraph.norms.crown_l2 import CrownL2

ort = pytest.importorskip("onnxruntime")

# (out channels, kh, kw, strides, dilations, group, pads top/left/bottom/right or None, auto_pad or None)
CASES = {
    "same-upper": (
        2,
        (7, 6),
        [(3, 4, 3, (2, 2), (1, 1), 1, None, "SAME_UPPER"), (2, 2, 3, (1, 3), (1, 1), 1, None, "SAME_UPPER")],
    ),
    "same-lower": (
        1,
        (6, 7),
        [(2, 4, 2, (1, 2), (1, 1), 1, None, "SAME_LOWER"), (3, 3, 2, (2, 1), (1, 1), 1, None, "SAME_LOWER")],
    ),
    "asymmetric-pads": (
        1,
        (6, 5),
        [(3, 3, 2, (1, 1), (1, 1), 1, (0, 1, 2, 0), None), (2, 2, 2, (2, 1), (1, 1), 1, (1, 0, 0, 1), None)],
    ),
    "auto-pad-valid": (
        2,
        (7, 6),
        [(3, 3, 3, (1, 1), (1, 1), 1, (2, 2, 2, 2), "VALID"), (2, 2, 2, (1, 1), (1, 1), 1, None, "VALID")],
    ),
    "stride-above-kernel": (
        1,
        (9, 8),
        [(3, 2, 2, (3, 4), (1, 1), 1, (1, 0, 0, 1), None), (2, 2, 1, (2, 1), (1, 1), 1, (0, 0, 0, 0), None)],
    ),
    "dilation-with-stride": (
        2,
        (9, 9),
        [(4, 3, 2, (2, 3), (2, 2), 2, (2, 1, 0, 2), None), (3, 2, 2, (1, 2), (2, 1), 1, (1, 1, 1, 1), None)],
    ),
    "kernel-wider-than-map": (
        1,
        (3, 4),
        [(2, 5, 5, (1, 1), (1, 1), 1, (1, 1, 1, 1), None), (2, 1, 1, (1, 1), (1, 1), 1, (0, 0, 0, 0), None)],
    ),
    "one-by-one": (
        3,
        (4, 5),
        [(2, 1, 1, (1, 1), (1, 1), 1, (0, 0, 0, 0), None), (2, 1, 1, (2, 2), (1, 1), 1, (1, 0, 1, 0), None)],
    ),
    "depthwise": (
        3,
        (6, 7),
        [(3, 3, 3, (1, 1), (1, 1), 3, (1, 1, 1, 1), None), (6, 3, 2, (2, 2), (1, 1), 3, (0, 1, 1, 0), None)],
    ),
    "non-square": (
        2,
        (5, 11),
        [(3, 2, 5, (1, 2), (1, 1), 1, (1, 2, 0, 2), None), (2, 3, 1, (2, 1), (1, 3), 1, (1, 0, 1, 0), None)],
    ),
    "one-output-padded": (
        1,
        (5, 5),
        [(2, 3, 3, (1, 1), (1, 1), 1, (0, 0, 0, 0), None), (3, 2, 2, (5, 5), (1, 1), 1, (1, 1, 0, 0), None)],
    ),
    "three-strides": (
        1,
        (10, 9),
        [
            (2, 3, 3, (2, 2), (1, 1), 1, (1, 1, 1, 1), None),
            (3, 3, 3, (1, 2), (2, 1), 1, (2, 1, 0, 0), None),
            (2, 2, 3, (3, 1), (1, 1), 1, (0, 0, 2, 1), None),
        ],
    ),
}


def _graph(rng: np.random.Generator, cin: int, hw: tuple[int, int], convs: list, variant: bool) -> onnx.ModelProto:
    """Conv -> (bias by Add of a (C, 1, 1) constant) -> (Sub of a constant map, last conv) -> Relu / LeakyRelu
    ... -> Flatten -> Gemm (transB unless ``variant``)."""
    nodes, inits = [], []
    cur, c = "x", cin
    shape = (cin, *hw)
    for i, (o, kh, kw, s, d, g, pads, auto_pad) in enumerate(convs):
        inits.append(onh.from_array((rng.standard_normal((o, c // g, kh, kw)) * 0.7).astype(np.float32), f"w{i}"))
        ins = [cur, f"w{i}"]
        if not variant:
            inits.append(onh.from_array((rng.standard_normal(o) * 0.3).astype(np.float32), f"b{i}"))
            ins.append(f"b{i}")
        attrs = {"strides": list(s), "dilations": list(d), "group": g, "kernel_shape": [kh, kw]}
        attrs.update({"auto_pad": auto_pad} if auto_pad else {"pads": list(pads)})
        nodes.append(oh.make_node("Conv", ins, [f"c{i}"], name=f"conv{i}", **attrs))
        cur = f"c{i}"
        if auto_pad and auto_pad.startswith("SAME"):  # ONNX: output ceil(input / stride)
            shape = (o, -(-shape[1] // s[0]), -(-shape[2] // s[1]))
        else:
            pt, pl, pb, pr = (0, 0, 0, 0) if auto_pad == "VALID" else pads
            shape = (
                o,
                (shape[1] + pt + pb - d[0] * (kh - 1) - 1) // s[0] + 1,
                (shape[2] + pl + pr - d[1] * (kw - 1) - 1) // s[1] + 1,
            )
        if variant:
            inits.append(onh.from_array((rng.standard_normal((o, 1, 1)) * 0.3).astype(np.float32), f"a{i}"))
            nodes.append(oh.make_node("Add", [cur, f"a{i}"], [f"ab{i}"], name=f"add{i}"))
            cur = f"ab{i}"
            if i == len(convs) - 1:
                inits.append(onh.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), "sub"))
                nodes.append(oh.make_node("Sub", [cur, "sub"], ["sb"], name="sub"))
                cur = "sb"
            nodes.append(oh.make_node("LeakyRelu", [cur], [f"r{i}"], alpha=0.2, name=f"act{i}"))
        else:
            nodes.append(oh.make_node("Relu", [cur], [f"r{i}"], name=f"act{i}"))
        cur, c = f"r{i}", o
    nodes.append(oh.make_node("Flatten", [cur], ["f"], name="flat"))
    nf, k = int(np.prod(shape)), 4
    w = rng.standard_normal((nf, k) if variant else (k, nf)) * 0.5
    inits += [
        onh.from_array(w.astype(np.float32), "gw"),
        onh.from_array(rng.standard_normal(k).astype(np.float32), "gb"),
    ]
    nodes.append(oh.make_node("Gemm", ["f", "gw", "gb"], ["y"], transB=0 if variant else 1, name="gemm"))
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *hw])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, k])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


class _DirectDense(CrownL2):
    def _backward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["direct"] = True
        return super()._backward(*args, **kwargs)


def _pgd(dense: CrownL2, x: np.ndarray, t: int, j: int, r: float, start: np.ndarray, steps: int = 25) -> np.ndarray:
    """L2 PGD on F_t - F_j of the dense (float64) chain from ``start``: gradients from the matrices."""
    x0 = x.reshape(-1)
    xa = start.reshape(-1).copy()
    for step in range(steps):
        h, masks = xa[None], []
        for k, lay in enumerate(dense.layers[:-1]):
            h = h @ lay.w.T + lay.b
            masks.append(np.where(h >= 0, 1.0, dense.alphas[k]))
            h = h * masks[-1]
        g = (dense.layers[-1].w[t] - dense.layers[-1].w[j])[None]
        for k in range(len(dense.alphas) - 1, -1, -1):
            g = (g * masks[k]) @ dense.layers[k].w
        xa = xa - (r / 4.0) * (0.8**step) * g[0] / (np.linalg.norm(g) + 1e-300)
        d = xa - x0
        xa = x0 + d * min(1.0, r / max(float(np.linalg.norm(d)), 1e-300))
    return xa.reshape(x.shape)


@pytest.mark.parametrize("variant", [False, True], ids=["bias-relu-transB", "add-sub-leaky-noTransB"])
@pytest.mark.parametrize("case", list(CASES))
def test_structured_geometry_matches_dense_and_onnx_runtime(case: str, variant: bool, monkeypatch) -> None:
    cin, hw, convs = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case) * 2 + variant)
    model = _graph(rng, cin, hw, convs, variant)
    g = unfused_graph(model, None, (1, cin, *hw))
    structured = read_chain(g, g.output_name, form="structured")
    dense = read_chain(g, g.output_name, form="dense")
    assert isinstance(structured, CrownConv) and isinstance(dense, CrownL2)
    direct = _DirectDense(dense.layers, dense.alphas)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(pts: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {"x": p[None].astype(np.float32)})[0] for p in pts]).astype(np.float64)

    xs = rng.uniform(0, 1, (3, cin, *hw)).astype(np.float32)
    t = np.argmax(run(xs), axis=1)
    dim = xs[0].size
    for r in (0.0, 0.05, 0.4):
        lb = structured.margin_lower_bounds(xs, t, r)
        ref = direct.margin_lower_bounds(xs, t, r)
        fin = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(lb), fin)
        np.testing.assert_allclose(lb[fin], ref[fin], rtol=1e-9, atol=1e-9)
        monkeypatch.setattr(crown_conv, "ROW_BLOCK_ENTRIES", 40.0)  # one channel per block, rows split
        np.testing.assert_allclose(structured.margin_lower_bounds(xs, t, r)[fin], lb[fin], rtol=1e-12, atol=1e-12)
        monkeypatch.undo()
        if r == 0.0:  # the bounded network is the one ONNX Runtime runs: at the sample the bound is its margin
            f = run(xs)
            at_x = f[np.arange(len(xs)), t][:, None] - f
            np.testing.assert_allclose(lb[fin], at_x[fin], rtol=0, atol=1e-4)
            continue
        for i in range(len(xs)):
            d = rng.standard_normal((30, dim))
            pts = xs[i].astype(np.float64) + (r * d / np.linalg.norm(d, axis=1, keepdims=True)).reshape(
                30, *xs.shape[1:]
            )
            for j in range(lb.shape[1]):
                if j != t[i]:
                    pts = np.concatenate([pts, _pgd(dense, xs[i].astype(np.float64), t[i], j, r, pts[j])[None]])
            inside = np.linalg.norm((pts - xs[i]).reshape(len(pts), -1), axis=1) <= r * (1 + 1e-6)
            f = run(pts[inside])
            margins = f[:, t[i]][:, None] - f
            margins[:, t[i]] = np.inf
            assert np.all(lb[i][None] <= margins + 1e-5), (case, r, i)  # ORT's float32 error is far below 1e-5


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_same_auto_pad_is_resolved_as_onnx_runtime_pads(auto_pad: str) -> None:
    """conv2d_linear (both forms' convolution) on a lone SAME Conv with odd total pads equals ONNX Runtime."""
    from lipgraph.norms.conv_apply import conv2d_linear

    rng = np.random.default_rng(3)
    w = rng.standard_normal((2, 1, 4, 3)).astype(np.float32)
    attrs = {"auto_pad": auto_pad, "strides": [2, 3], "kernel_shape": [4, 3]}
    node = oh.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 7, 6])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onh.from_array(w, "w")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.standard_normal((1, 1, 7, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    attrs["auto_pad"] = auto_pad.encode()  # as onnx stores it
    got = conv2d_linear(x.astype(np.float64), w.astype(np.float64), attrs)[0]
    assert got.shape == want.shape == (1, 2, 4, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_auto_pad_with_dilation_is_refused() -> None:
    from lipgraph.norms.conv_apply import ConvNotSupported, conv2d_linear

    attrs = {"auto_pad": b"SAME_UPPER", "dilations": [2, 1]}
    with pytest.raises(ConvNotSupported, match="dilations"):
        conv2d_linear(np.zeros((1, 1, 5, 5)), np.ones((1, 1, 2, 2)), attrs)
