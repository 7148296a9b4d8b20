"""The exported last layer of a plain (LMT, AWP, plain) network is centred: every logit shifts by one amount,
so predictions, margins and softmax are the trained model's, through ONNX Runtime; the analyzer's global bound
and the proven float allowance can only drop. 1-Lipschitz layers are exported as they are."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lipgraph.analyze import analyze
from lipgraph.certify import certify
from lipgraph.train.archs import build_model
from lipgraph.train.data import load
from lipgraph.train.export import export_onnx, plain_model


@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0, limit_test=200)


def _with_common_row(digits, scale: float):
    """A ReLU MLP whose last layer carries a large common row, as LMT's pairwise loss leaves it."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.in_shape, digits.n_classes, "lmt")
    with torch.no_grad():
        last = model.layers[-1]
        last.weight.add_(scale * torch.randn(1, last.in_features))
        last.bias.add_(scale * 3.0)
    return model


def _ort(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float64)


def test_centred_export_keeps_margins_and_lowers_the_bound(digits, tmp_path):
    model = _with_common_row(digits, 2.0)
    x = digits.x_test
    with torch.no_grad():
        trained = model(torch.from_numpy(x)).double().numpy()
    path = str(tmp_path / "c.onnx")
    export_onnx(plain_model(model), digits.in_shape, path, {})
    got = _ort(path, x)
    # the same logits up to one shift per sample: margins, argmax and softmax are the trained model's
    np.testing.assert_allclose(got - got[:, :1], trained - trained[:, :1], atol=1e-4 * np.abs(trained).max())
    assert (got.argmax(1) == trained.argmax(1)).all()
    np.testing.assert_allclose(got.mean(1), 0.0, atol=1e-4 * np.abs(trained).max())  # the common part is gone
    # the uncentred export, built by hand, is what the old exporter wrote: its bound is far larger
    raw = plain_model(model)
    with torch.no_grad():
        raw[-1].weight.copy_(model.layers[-1].weight)
        raw[-1].bias.copy_(model.layers[-1].bias)
    raw_path = str(tmp_path / "raw.onnx")
    export_onnx(raw, digits.in_shape, raw_path, {})
    np.testing.assert_allclose(_ort(raw_path, x), trained, rtol=1e-4, atol=1e-4)
    b_c, b_raw = analyze(path).bound, analyze(raw_path).bound
    assert b_c < 0.5 * b_raw
    # sound either way, and the certificate of the centred file is at least as strong on every sample
    c_c, c_raw = certify(path, x, digits.y_test, eps=[0.1]), certify(raw_path, x, digits.y_test, eps=[0.1])
    assert (c_c.correct == c_raw.correct).all()
    assert (c_c.radii >= c_raw.radii * (1 - 1e-6)).all()


@pytest.mark.parametrize("arch,method", [("mlp", "groupsort"), ("aol-cnn", "plain")])
def test_one_lipschitz_last_layers_are_not_centred(digits, arch, method):
    torch.manual_seed(0)
    model = build_model(arch, digits.in_shape, digits.n_classes, method, bjorck_iters=3)
    net = plain_model(model)
    from lipgraph.train.export import final_weight

    np.testing.assert_allclose(
        net[-1].weight.detach().double().numpy(), final_weight(model.layers[-1]).numpy(), atol=1e-6
    )
