"""The structured local bound for conv chains (lipgraph.norms.crown_conv) against the dense one and ONNX Runtime.

Real exports (torch, both exporters) of small conv chains with strides, pads, dilations, groups, LeakyReLU:
the structured bound (convolutions, transposed convolutions on receptive-field patches) must give the dense
form's numbers (every layer expanded to a matrix, input norms taken directly, as the structured form does)
to ~1e-9, and lie below ONNX Runtime's own margins at points of the ball. A crafted net checked in exact
rational arithmetic needs the first conv layer's rounding term; a wrong transposed conv breaks the agreement.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from lipgraph.chain import unfused_graph
from lipgraph.local_bounds import NotLocal, read_chain
from lipgraph.norms.conv_patches import ConvSpec
from lipgraph.norms.crown_conv import CrownConv, Layer
from lipgraph.norms.crown_l2 import CrownL2
from tests.norms.test_crown_l2 import _exact_min_below

torch = pytest.importorskip("torch")
nn = torch.nn


class _DirectDense(CrownL2):
    """The dense form with every input norm taken from the vector itself (the structured form's choice)."""

    def _backward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["direct"] = True
        return super()._backward(*args, **kwargs)


def _model(config: str) -> tuple[object, tuple[int, ...]]:
    torch.manual_seed(len(config))
    if config == "strided":
        layers = [
            nn.Conv2d(1, 3, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, 4),
        ]
        return nn.Sequential(*layers).eval(), (1, 6, 6)
    if config == "dilated-groups":
        layers = [
            nn.Conv2d(2, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
            nn.LeakyReLU(0.1),
            nn.Conv2d(4, 4, 2, stride=2, groups=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(24, 7),
            nn.ReLU(),
            nn.Linear(7, 3),
        ]
        return nn.Sequential(*layers).eval(), (2, 7, 6)
    # "three-convs": a receptive field that grows over three layers, unpadded and padded, odd sizes
    layers = [
        nn.Conv2d(1, 3, 3, stride=1, padding=0),
        nn.ReLU(),
        nn.Conv2d(3, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 2, stride=1, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 5),
    ]
    return nn.Sequential(*layers).eval(), (1, 9, 9)


def _export(model: object, shape: tuple[int, ...], dynamo: bool, path: Path) -> onnx.ModelProto:
    x = torch.rand(1, *shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=dynamo, input_names=["x"], dynamic_axes=None if dynamo else {"x": {0: "N"}}
        )
    return onnx.load(str(path))


@pytest.mark.parametrize("dynamo", [False, True])
@pytest.mark.parametrize("config", ["strided", "dilated-groups", "three-convs"])
def test_structured_equals_dense_and_holds_for_onnx_runtime(config: str, dynamo: bool, tmp_path: Path) -> None:
    import onnxruntime as ort

    model, shape = _model(config)
    path = tmp_path / "m.onnx"
    proto = _export(model, shape, dynamo, path)
    g = unfused_graph(proto, None, (1, *shape))
    structured = read_chain(g, g.output_name, form="structured")
    dense = read_chain(g, g.output_name, form="dense")
    assert isinstance(structured, CrownConv) and isinstance(dense, CrownL2)
    direct = _DirectDense(dense.layers, dense.alphas)
    assert structured.sizes == dense.sizes

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(pts: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {name: p[None].astype(np.float32)})[0] for p in pts])

    rng = np.random.default_rng(1)
    xs = rng.uniform(0, 1, (6, *shape)).astype(np.float32)
    t = np.argmax(run(xs), axis=1)
    dim = int(np.prod(shape))
    for r in (0.0, 0.05, 0.3):
        lb = structured.margin_lower_bounds(xs, t, r)
        ref = direct.margin_lower_bounds(xs, t, r)
        fin = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(lb), fin)
        np.testing.assert_allclose(lb[fin], ref[fin], rtol=1e-9, atol=1e-9)
        # the Gram-matrix form of the dense bound is a little looser (its rounding term sits under a root)
        assert np.all(lb[fin] >= dense.margin_lower_bounds(xs, t, r)[fin] - 1e-9)
        if r == 0.0:
            continue
        for i in range(len(xs)):
            d = rng.standard_normal((60, dim))
            d = r * d / np.linalg.norm(d, axis=1, keepdims=True)
            f = run(xs[i][None] + d.reshape(60, *shape)).astype(np.float64)
            margins = f[:, t[i]][:, None] - f
            margins[:, t[i]] = np.inf
            assert np.all(lb[i][None] <= margins + 1e-5), (r, i)  # ORT's float32 error is far below 1e-5 here
    assert np.mean(np.min(structured.margin_lower_bounds(xs, t, 0.01), axis=1) > 0) > 0.3, "vacuous"


def test_a_wrong_transposed_conv_breaks_the_agreement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The agreement test can fail: a kernel flipped in the transposed conv (a classic mistake) is caught."""
    from lipgraph.norms import conv_patches

    model, shape = _model("strided")
    g = unfused_graph(_export(model, shape, False, tmp_path / "m.onnx"), None, (1, *shape))
    xs = np.random.default_rng(2).uniform(0, 1, (4, *shape))
    t = np.zeros(4, dtype=np.int64)
    dense = read_chain(g, g.output_name, form="dense")
    ref = _DirectDense(dense.layers, dense.alphas).margin_lower_bounds(xs, t, 0.1)
    real = conv_patches.conv_transpose
    monkeypatch.setattr(conv_patches, "conv_transpose", lambda nu, k, spec: real(nu, k[:, :, ::-1, ::-1], spec))
    bad = read_chain(g, g.output_name, form="structured").margin_lower_bounds(xs, t, 0.1)
    fin = np.isfinite(ref)
    assert not np.allclose(bad[fin], ref[fin], rtol=1e-9, atol=1e-9)


def test_crafted_conv_needs_the_first_layer_rounding_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 x 2 conv ``z_0 = x_1 + x_2 - 2^60`` at ``x = (2^60, 1)``: float64 gives 0, the real value is 1.
    ``F_0 - F_1 = 0.5 - h`` is -0.5 near x; without the conv's rounding term the bound claims a positive margin."""
    from lipgraph.norms import crown_conv

    def net() -> CrownConv:
        conv = ConvSpec(np.array([[[[1.0, 1.0]]]]), (1, 1), (0, 0, 0, 0), (1, 1), 1)
        first = Layer((1, 1, 2), (1, 1, 1), np.array([-(2.0**60)]), np.zeros(1), conv=conv)
        last = Layer((1, 1, 1), (2, 1, 1), np.array([0.5, 0.0]), np.zeros(2), w=np.array([[-1.0], [0.0]]))
        return CrownConv([first, last], [0.0])

    x, r = np.array([2.0**60, 1.0]), 2.0**-20
    lb = net().margin_lower_bounds(x.reshape(1, 1, 1, 2), np.array([0]), r)[0, 1]
    assert _exact_min_below(np.array([[1.0, 1.0]]), np.array([-(2.0**60)]), np.array([-1.0]), 0.5, x, r, lb)
    monkeypatch.setattr(crown_conv, "gamma", lambda n, u: 0.0)  # the mutation: no rounding terms
    naive = net().margin_lower_bounds(x.reshape(1, 1, 1, 2), np.array([0]), r)[0, 1]
    assert naive > 0 and not _exact_min_below(
        np.array([[1.0, 1.0]]), np.array([-(2.0**60)]), np.array([-1.0]), 0.5, x, r, naive
    )


def test_a_conv_after_a_dense_layer_is_refused_by_the_structured_form_and_auto_stays_dense(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 18),
        nn.ReLU(),
        nn.Unflatten(1, (2, 3, 3)),
        nn.Conv2d(2, 2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    shape = (1, 4, 4)
    g = unfused_graph(_export(model, shape, False, tmp_path / "m.onnx"), None, (1, *shape))
    with pytest.raises(NotLocal, match="reshaped map"):
        read_chain(g, g.output_name, form="structured")
    assert isinstance(read_chain(g, g.output_name), CrownL2)


def test_auto_keeps_the_dense_form_where_it_is_cheaper_and_caps_the_structured_one(tmp_path: Path) -> None:
    model, shape = _model("strided")
    g = unfused_graph(_export(model, shape, False, tmp_path / "m.onnx"), None, (1, *shape))
    assert isinstance(read_chain(g, g.output_name, max_work=5e7), CrownL2)  # tiny: dense is cheaper
    # the dense form over its cap: the structured one, unless that is over its own cap too (refused before
    # any matrix is built)
    assert isinstance(read_chain(g, g.output_name, max_work=10.0), CrownConv)
    with pytest.raises(NotLocal, match="structured conv form"):
        read_chain(g, g.output_name, max_work=10.0, max_structured_work=10.0)
