"""AOL layers and the ``aol-cnn`` architecture: 1-Lipschitz for any weights (exact float64 Jacobian norm as
the oracle), and a trained net exported with both torch exporters gets an analyzer bound <= 1.01 that dominates
its Jacobian norms, with ONNX Runtime computing the trained function."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lipgraph.analyze import analyze
from lipgraph.train.aol import AOLConv2d, AOLLinear
from lipgraph.train.data import load
from lipgraph.train.export import export_onnx, plain_model
from lipgraph.train.loop import TrainConfig, train


def _exact_norm(f, in_shape):
    n = int(np.prod(in_shape))
    jac = torch.autograd.functional.jacobian(
        lambda v: f(v.view(1, *in_shape)).flatten(), torch.zeros(n, dtype=torch.float64)
    )
    return np.linalg.norm(jac.numpy(), 2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["conv3", "conv5", "down2", "linear"])
def test_aol_layers_are_1_lipschitz_for_random_weights(kind, seed):
    torch.manual_seed(seed)
    shape = (3, 6, 6)
    if kind == "linear":
        layer = AOLLinear(12, 7)
        shape = (12,)
    else:
        k, s = {"conv3": (3, 1), "conv5": (5, 1), "down2": (2, 2)}[kind]
        layer = AOLConv2d(shape, 4 + seed, k, stride=s)
    with torch.no_grad():
        layer.weight.normal_()  # not the near-orthogonal init: any weights must give <= 1
        if seed % 2:
            layer.weight[:, 0] *= 10.0  # badly scaled input channels
    w = layer.rescale(layer.weight.detach().double())
    if kind == "linear":
        norm = _exact_norm(lambda v: v.flatten(1) @ w.t(), shape)
    else:
        norm = _exact_norm(lambda v: torch.nn.functional.conv2d(v, w, None, layer.stride, layer.padding), shape)
    assert norm <= 1.0 + 1e-9
    assert norm > 0.3  # not vacuous: the rescaling keeps a sizeable part of the norm


def test_strided_aol_conv_needs_kernel_equal_stride():
    with pytest.raises(ValueError, match="kernel_size == stride"):
        AOLConv2d((3, 8, 8), 4, 3, stride=2)


@pytest.fixture(scope="module")
def trained():
    data = load("digits", seed=0)
    model, hist = train(TrainConfig(arch="aol-cnn", method="groupsort", epochs=2, eps=0.5, lr=3e-3, seed=0), data)
    return data, model, hist


def test_aol_cnn_trains_on_digits(trained):
    _, _, hist = trained
    assert hist[-1].val_acc > 0.75
    assert hist[-1].loss < hist[0].loss


@pytest.mark.parametrize("legacy", [False, True], ids=["dynamo", "legacy"])
def test_aol_cnn_export_bound_and_forward(trained, tmp_path, legacy):
    data, model, _ = trained
    net = plain_model(model)
    path = str(tmp_path / "aol.onnx")
    export_onnx(net, data.in_shape, path, {"arch": "aol-cnn"}, legacy=legacy)
    x = data.x_test[:48]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=2e-5)
    bound = analyze(path).bound
    assert bound <= 1.01
    net64 = net.double()
    jac = max(
        _exact_norm(lambda v, xi=xi: net64(v + torch.from_numpy(xi).double()[None]), data.in_shape) for xi in x[:4]
    )
    assert jac <= bound * (1 + 1e-6)
    assert jac > 0.2  # the oracle is not vacuous
