"""--attack-eval: PGD-L2 robust accuracy beside the certificate. An attack can never beat a certificate, so
robust >= certified at every eps; the attack is not vacuous (it flips samples at a large eps)."""

import json

import onnx
import pytest
import torch
from click.testing import CliRunner

from lipgraph.train.attack_eval import AttackConfig, robust_accuracy
from lipgraph.train.data import load
from lipgraph.train.loop import TrainConfig
from lipgraph.train.pipeline import run

EPS = [0.1, 0.3, 0.6, 1.2]


@pytest.fixture(scope="module")
def digits():
    return load("digits", seed=0, limit_test=120)


@pytest.mark.slow
def test_robust_at_least_certified_at_every_eps(digits, tmp_path):
    cfg = TrainConfig(arch="mlp", method="lmt", epochs=3, c=0.5, seed=0)
    res = run(
        cfg, "digits", str(tmp_path / "m.onnx"), data=digits, certify_eps=EPS, attack=AttackConfig(steps=20, restarts=1)
    )
    cert = res.certificate["certified_accuracy"]
    rob = res.robust_accuracy
    assert set(rob) == set(cert)
    for k in cert:
        assert rob[k] >= cert[k], (k, rob[k], cert[k])
    assert rob["0.1"] <= res.certificate["clean_accuracy"] + 1e-12
    assert rob["0.1"] > 0.5  # not vacuous at a small radius ...
    assert rob["1.2"] < rob["0.1"]  # ... and the attack does flip samples at a large one
    # PGD inside each certified sample's own radius flips none of them (a flip would disprove the certificate)
    assert res.radius_check["attacked"] >= round(cert["0.1"] * 120) > 0
    assert res.radius_check["flipped"] == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["lipgraph.pgd_robust_accuracy"]) == rob


def test_attack_flips_a_linear_model_exactly_beyond_its_margin():
    # a 2-class linear model: the L2 distance to the boundary is |margin| / ||w1 - w0||, so PGD must flip
    # every sample whose distance is below eps (pixels far from the box edges)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.mul_(20.0)  # boundary distances well inside the [0, 1] box around x in [0.4, 0.6]
        net[1].bias.copy_(-net[1].weight.sum(1) * 0.5)
    x = (0.4 + 0.2 * torch.rand(64, 1, 2, 2)).numpy()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    y = logits.argmax(1).numpy()
    w = net[1].weight.detach()
    dist = (logits[:, 0] - logits[:, 1]).abs() / (w[0] - w[1]).norm()
    eps = float(dist.median())
    assert eps < 0.05
    got = robust_accuracy(net, x, y, [eps], AttackConfig(steps=30, restarts=1))[eps]
    expected = float((dist > eps * 1.001).float().mean())  # all other samples stay in the box and flip
    assert got == pytest.approx(expected, abs=1.5 / 64)


def test_cli_flag_in_help():
    from lipgraph.cli import cli

    assert "--attack-eval" in CliRunner().invoke(cli, ["train", "--help"]).output


@pytest.mark.slow
def test_cli_reports_robust_beside_certified(tmp_path):
    from lipgraph.cli import cli

    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(
        cli,
        ["train", "--method", "lmt", "--epochs", "1", "--attack-eval", "--attack-steps", "5", "-q", "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert "PGD-L2 robust@0.5" in res.output and "certification gap" in res.output
    assert "inside each certified radius" in res.output and "(none flipped)" in res.output


def test_no_attack_without_the_flag(digits, tmp_path):
    res = run(TrainConfig(epochs=1), "digits", str(tmp_path / "m.onnx"), data=digits)
    assert res.robust_accuracy is None
    meta = {p.key for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "lipgraph.pgd_robust_accuracy" not in meta


def _linear_two_class(n: int = 64):
    """A 2-class linear model and points whose exact L2 distances to its boundary are known (well inside [0, 1])."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.mul_(20.0)
        net[1].bias.copy_(-net[1].weight.sum(1) * 0.5)
    x = (0.4 + 0.2 * torch.rand(n, 1, 2, 2)).numpy()
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    w = net[1].weight.detach()
    dist = ((logits[:, 0] - logits[:, 1]).abs() / (w[0] - w[1]).norm()).double().numpy()
    return net, x, logits.argmax(1).numpy(), dist


def test_radius_check_flips_nothing_inside_the_exact_distance():
    from lipgraph.train.attack_eval import flips_inside_radii

    net, x, y, dist = _linear_two_class()
    radii = dist * 0.999  # a sound certificate: every ball stays on the right side of the boundary
    radii[::4] = 0.0  # uncertified samples are not attacked
    got = flips_inside_radii(net, x, y, radii, AttackConfig(steps=30, restarts=1))
    assert got == {"attacked": 48, "flipped": 0}


def test_radius_check_catches_a_radius_beyond_the_boundary():
    from lipgraph.train.attack_eval import flips_inside_radii

    net, x, y, dist = _linear_two_class()
    radii = dist.copy()
    radii[::2] *= 1.1  # an unsound "certificate" on half of the samples: PGD must find each of them
    got = flips_inside_radii(net, x, y, radii, AttackConfig(steps=30, restarts=1))
    assert got == {"attacked": 64, "flipped": 32}
