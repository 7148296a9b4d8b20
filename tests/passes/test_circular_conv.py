"""Wrap padding + valid Conv -> one circular conv with its exact norm (lipgraph/passes/circular_conv.py).

Oracle: the dense matrix of the whole ONNX model (pad + conv), built by feeding basis vectors through
onnxruntime, and its SVD. Matches must give exactly that norm; near-misses must not be fused and keep a
sound (generic) bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from lipgraph import analyze
from lipgraph.graph_build import build_graph
from lipgraph.passes import run_passes
from tests.helpers.onnx_oracle import exact_norm, make_model

REL = 1e-9


def _conv_node(src: str, k: tuple[int, ...], strides=None, dilations=None, group=1, pads=None):
    d = len(k)
    return helper.make_node(
        "Conv", [src, "W"], ["y"], kernel_shape=list(k), strides=strides or [1] * d,
        dilations=dilations or [1] * d, group=group, pads=pads or [0] * (2 * d),
    )  # fmt: skip


def pad_model(shape, w, pads_b, pads_e, mode="wrap", strides=None, dilations=None, group=1, conv_pads=None):
    """Dynamo form: Pad(mode) on the spatial axes, then a valid Conv."""
    d = len(shape) - 2
    pads = np.array([0, 0, *pads_b, 0, 0, *pads_e], dtype=np.int64)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode=mode),
        _conv_node("p", w.shape[2:], strides, dilations, group, conv_pads),
    ]
    del d
    return make_model(nodes, [("x", shape)], ["y"], {"W": w.astype(np.float32), "pads": pads}, opset=18)


def slice_concat_model(shape, w, pads_b, pads_e, swap=False, strides=None, dilations=None, group=1):
    """Legacy form: per spatial axis Concat(x[-b:], x, x[:e]); ``swap`` takes the wrong ends (not a wrap)."""
    nodes, inits, src = [], {"W": w.astype(np.float32)}, "x"
    for j, (b, e) in enumerate(zip(pads_b, pads_e, strict=True)):
        ax = 2 + j
        if b == 0 and e == 0:
            continue
        parts = []
        for tag, lo, hi in (("b", -b, 2**62), ("e", 0, e)):
            if (b if tag == "b" else e) == 0:
                continue
            if swap:
                lo, hi = (0, b) if tag == "b" else (-e, 2**62)
            name = f"s{tag}{j}"
            for k2, v in (("st", lo), ("en", hi), ("ax", ax)):
                inits[f"{name}_{k2}"] = np.array([v], dtype=np.int64)
            nodes.append(helper.make_node("Slice", [src, f"{name}_st", f"{name}_en", f"{name}_ax"], [name]))
            parts.append((tag, name))
        ins = [n for t, n in parts if t == "b"] + [src] + [n for t, n in parts if t == "e"]
        nodes.append(helper.make_node("Concat", ins, [f"c{j}"], axis=ax))
        src = f"c{j}"
    nodes.append(_conv_node(src, w.shape[2:], strides, dilations, group))
    return make_model(nodes, [("x", shape)], ["y"], inits, opset=17)


def _fused(model) -> bool:
    g = build_graph(model, None, None)
    run_passes(g)
    return any(n.op_type == "CircularConv" for n in g.nodes)


CASES = [
    # shape, kernel (out, in/group, k...), pads_b, pads_e, strides, dilations, group
    ((1, 2, 6, 6), (3, 2, 3, 3), (1, 1), (1, 1), None, None, 1),
    ((1, 3, 5, 4), (2, 3, 2, 3), (1, 1), (0, 1), None, None, 1),  # even kernel: asymmetric wrap
    ((1, 2, 8, 8), (4, 2, 3, 3), (1, 1), (1, 1), [2, 2], None, 1),  # stride dividing the grid
    ((1, 2, 7, 7), (2, 2, 3, 3), (2, 2), (2, 2), None, [2, 2], 1),  # dilation
    ((1, 4, 5, 5), (4, 2, 3, 3), (1, 1), (1, 1), None, None, 2),  # groups
    ((1, 3, 9), (2, 3, 5), (2,), (2,), None, None, 1),  # 1-D
    ((1, 2, 3, 3), (2, 2, 3, 3), (2, 2), (0, 0), None, None, 1),  # reach as large as the axis
]


@pytest.mark.parametrize("form", ["pad", "slice_concat"])
@pytest.mark.parametrize("case", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_circular_conv_is_exact(case, form: str) -> None:
    shape, kshape, pb, pe, strides, dil, group = case
    w = np.random.default_rng(sum(kshape)).standard_normal(kshape)
    build = pad_model if form == "pad" else slice_concat_model
    model = build(shape, w, pb, pe, strides=strides, dilations=dil, group=group)
    truth = exact_norm(model, shape)
    assert _fused(model)
    bound = analyze(model).bound
    assert truth * (1 - REL) <= bound <= truth * (1 + REL), (bound, truth)


NEAR_MISSES = {
    "pad one short": dict(pb=(1, 1), pe=(0, 1)),
    "pad one long": dict(pb=(1, 2), pe=(1, 1)),
    "one axis only": dict(pb=(1, 0), pe=(1, 0)),
    "zero padding": dict(mode="constant"),
    "reflect padding": dict(mode="reflect"),
    "stride not dividing": dict(shape=(1, 2, 7, 7), strides=[2, 2]),
    "conv pads on top": dict(conv_pads=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_miss_pad_is_not_fused_and_stays_sound(name: str) -> None:
    kw = {"shape": (1, 2, 6, 6), "pb": (1, 1), "pe": (1, 1), "mode": "wrap"} | NEAR_MISSES[name]
    w = np.random.default_rng(3).standard_normal((2, 2, 3, 3))
    shape = kw.pop("shape")
    model = pad_model(shape, w, kw.pop("pb"), kw.pop("pe"), **kw)
    assert not _fused(model)
    bound = analyze(model).bound
    assert bound >= exact_norm(model, shape) * (1 - 1e-7)


@pytest.mark.parametrize("name", ["swapped ends", "one short", "one axis"])
def test_near_miss_slice_concat(name: str) -> None:
    w = np.random.default_rng(4).standard_normal((2, 2, 3, 3))
    shape = (1, 2, 5, 5)
    if name == "swapped ends":
        model = slice_concat_model(shape, w, (1, 1), (1, 1), swap=True)
    elif name == "one short":
        model = slice_concat_model(shape, w, (1, 1), (1, 0))
    else:
        model = slice_concat_model(shape, w, (1, 0), (1, 0))
    assert not _fused(model)
    assert analyze(model).bound >= exact_norm(model, shape) * (1 - 1e-7)


def test_padded_tensor_read_elsewhere_is_not_fused() -> None:
    """Fan-out: the wrap-padded tensor also feeds another node, so the pad must stay (no fusion)."""
    w = np.random.default_rng(5).standard_normal((2, 2, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], mode="wrap"),
        _conv_node("p", (3, 3)),
        helper.make_node("ReduceMean", ["p"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Add", ["y", "m"], ["z"]),
    ]
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    model = make_model(nodes, [("x", (1, 2, 4, 4))], ["z"], {"W": w, "pads": pads}, opset=17)
    assert not _fused(model)
    assert analyze(model).bound >= exact_norm(model, (1, 2, 4, 4)) * (1 - 1e-7)


@pytest.mark.torch
@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_torch_circular_convs_with_batchnorm(dynamo: bool) -> None:
    """torch circular Conv -> BatchNorm -> circular Conv, as exported: exact against a float64 oracle
    (onnx's reference evaluator on the exported graph), with BN folded before the circular fusion."""
    torch = pytest.importorskip("torch")
    from tests.families import export_onnx
    from tests.helpers.onnx_oracle import dense_matrix, to_float64

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    conv = torch.nn.Conv2d
    m = torch.nn.Sequential(
        conv(2, 3, 3, padding=1, padding_mode="circular"), bn, conv(3, 2, 3, padding=1, padding_mode="circular")
    ).eval()
    proto = export_onnx(m, (1, 2, 6, 6), dynamo)
    mat = dense_matrix(to_float64(proto), (1, 2, 6, 6), backend="reference", dtype=np.float64)
    truth = float(np.linalg.svd(mat, compute_uv=False)[0])
    bound = analyze(proto).bound
    assert truth * (1 - REL) <= bound <= truth * (1 + REL), (bound, truth)
