"""Train -> export -> analyze: the exported model is the trained one, and its sound bound is >= the
Jacobian norm at data points; a GroupSort model's bound is <= 1.01."""

import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from lipgraph.analyze import analyze
from lipgraph.errors import LipgraphError
from lipgraph.train.data import load
from lipgraph.train.export import export_onnx, exported_bound_estimate, plain_model
from lipgraph.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0)


def _jacobian_norms(net, x):
    out = []
    for xi in x:
        j = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], torch.from_numpy(xi))
        out.append(np.linalg.norm(j.reshape(j.shape[0], -1).numpy(), 2))
    return np.array(out)


@pytest.mark.parametrize("maxmin", ["split", "prelu"])
def test_groupsort_export_bound_at_most_1_01(digits, tmp_path, maxmin):
    model, hist = train(TrainConfig(arch="mlp", method="groupsort", epochs=2, eps=0.5, seed=0), digits)
    assert hist[-1].val_acc > 0.7
    net = plain_model(model, maxmin)
    path = str(tmp_path / "gs.onnx")
    export_onnx(net, digits.in_shape, path, {"method": "groupsort"})
    # the file computes the trained function
    x = digits.x_test[:32]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=2e-4)
    bound = analyze(path).bound
    jac = _jacobian_norms(net, x[:5])
    assert bound <= 1.01
    assert bound >= jac.max() * (1 - 1e-6)
    assert jac.max() > 0.5  # the oracle is not vacuous: orthonormal layers are nearly norm-preserving


def test_lmt_trains_exports_and_bound_dominates(digits, tmp_path):
    model, hist = train(TrainConfig(arch="mlp", method="lmt", epochs=3, c=0.5, seed=0), digits)
    assert hist[-1].val_acc > 0.6
    est = exported_bound_estimate(model)  # of the exported weights (the last layer centred)
    net = plain_model(model)
    path = str(tmp_path / "lmt.onnx")
    export_onnx(net, digits.in_shape, path, {"method": "lmt", "trainer_bound_estimate": est})
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["lipgraph.method"] == "lmt" and float(meta["lipgraph.trainer_bound_estimate"]) == pytest.approx(est)
    bound = analyze(path).bound
    # the trainer's estimate is a product of converged per-layer norms: equal to the analyzer's
    # product of exact SVDs up to the SVD allowance
    assert bound == pytest.approx(est, rel=1e-3)
    assert bound >= _jacobian_norms(net, digits.x_test[:5]).max()


def test_interrupted_export_leaves_nothing(tmp_path):
    class Boom(torch.nn.Module):
        def forward(self, x):
            raise KeyboardInterrupt

    path = tmp_path / "m.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_onnx(Boom(), (1, 8, 8), str(path), {})
    assert os.listdir(tmp_path) == []


def test_cli_train_writes_model_and_test_split(tmp_path):
    from lipgraph.cli import cli

    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["train", "--method", "lmt", "--epochs", "2", "--c", "0.3",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists()
    with np.load(tmp_path / "m.test.npz") as f:
        assert f["x"].shape[1:] == (1, 8, 8) and f["x"].dtype == np.float32 and f["y"].dtype == np.int64
    assert "analyzer's bound" in res.output and "epoch   2/2" in res.output


def test_cli_without_torch_gives_one_line(monkeypatch):
    from lipgraph.cli import train as train_cmd

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(LipgraphError, match=r"pip install torch==2\.13\.0"):
        train_cmd.train.main(["--out", "x.onnx"], standalone_mode=False)
