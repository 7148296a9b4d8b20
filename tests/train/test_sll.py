"""SLL residual blocks and the ``sll-cnn`` architecture: every block's Jacobian norm is <= 1 at random points
for random weights (float64), and a trained net exported with both torch exporters is fused by the analyzer
into residual sandwiches (bound 1 each, whole net <= 1.01, dominating the Jacobian norm), with ONNX Runtime
computing the trained function."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lipgraph.analyze import analyze
from lipgraph.train.data import load
from lipgraph.train.export import export_onnx, plain_model
from lipgraph.train.loop import TrainConfig, train
from lipgraph.train.sll import SLLConv2d, SLLDense


def _jac_norm(f, x):
    jac = torch.autograd.functional.jacobian(lambda v: f(v.view_as(x)).flatten(), x.flatten())
    return np.linalg.norm(jac.numpy(), 2)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_sll_blocks_jacobian_at_most_1_for_random_weights(kind, seed):
    torch.manual_seed(seed)
    block = SLLDense(10, 14) if kind == "dense" else SLLConv2d(3, 5)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_()  # large weights, random q and biases: many active ReLUs
    block = block.double()
    x = torch.randn(1, 10, dtype=torch.float64) if kind == "dense" else torch.randn(1, 3, 5, 5, dtype=torch.float64)
    norms = [_jac_norm(block, x + 0.5 * torch.randn_like(x)) for _ in range(3)]
    assert max(norms) <= 1.0 + 1e-9
    # the export form computes the same function
    exported = block.export_module().double()
    with torch.no_grad():
        np.testing.assert_allclose(exported(x).numpy(), block(x).numpy(), rtol=1e-5, atol=1e-5)


def test_sll_without_the_scaling_is_not_1_lipschitz():
    # the oracle can fail: the same block with T = I (no SDP scaling) has Jacobian norms above 1
    torch.manual_seed(0)
    block = SLLDense(10, 14).double()
    with torch.no_grad():
        block.weight.normal_()
    block.scale = lambda w, q: torch.full((w.shape[1],), 2.0, dtype=w.dtype)
    x = torch.randn(1, 10, dtype=torch.float64)
    assert _jac_norm(block, x) > 1.5


@pytest.fixture(scope="module")
def trained():
    data = load("digits", seed=0)
    model, hist = train(TrainConfig(arch="sll-cnn", method="groupsort", epochs=2, eps=0.5, lr=3e-3, seed=0), data)
    return data, model, hist


def test_sll_cnn_trains_on_digits(trained):
    _, _, hist = trained
    assert hist[-1].val_acc > 0.75
    assert hist[-1].loss < hist[0].loss


@pytest.mark.parametrize("legacy", [False, True], ids=["dynamo", "legacy"])
def test_sll_cnn_export_bound_and_forward(trained, tmp_path, legacy):
    data, model, _ = trained
    net = plain_model(model)
    path = str(tmp_path / "sll.onnx")
    export_onnx(net, data.in_shape, path, {"arch": "sll-cnn"}, legacy=legacy)
    x = data.x_test[:48]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=2e-5)
    analysis = analyze(path)
    assert analysis.bound <= 1.01
    sandwiches = [n for n in analysis.nodes if n.op_type == "ResidualSandwich"]
    assert len(sandwiches) == 7 and all(n.bound <= 1.0 + 1e-6 for n in sandwiches)
    net64 = net.double()
    jac = max(_jac_norm(net64, torch.from_numpy(xi).double()[None]) for xi in x[:3])
    assert 0.2 < jac <= analysis.bound * (1 + 1e-6)
