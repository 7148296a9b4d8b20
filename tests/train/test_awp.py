"""AWP perturbs each weight by exactly gamma ||w_l||, restores it bit for bit, and steps with grad at w+v."""

import copy

import torch
import torch.nn.functional as F

from lipgraph.train.archs import build_model
from lipgraph.train.awp import AWP


def _setup():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, "plain")
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return model, x, y


def test_perturbation_size_and_exact_restore():
    model, x, y = _setup()
    before = copy.deepcopy(model.state_dict())
    awp = AWP(model, gamma=0.02)
    for _ in range(3):
        v = awp.calc(lambda m: F.cross_entropy(m(x), y))
        params = dict(model.named_parameters())
        assert set(v) == {n for n, p in params.items() if p.dim() > 1}  # weights only, no biases
        for n, d in v.items():
            assert torch.isclose(d.norm(), 0.02 * params[n].norm(), rtol=1e-5)
        awp.perturb(v)
        assert any(not torch.equal(params[n], before[n]) for n in v)
        awp.restore()
        for n, t in model.state_dict().items():
            if n in before and "u" not in n.split(".")[-1]:
                assert torch.equal(t, before[n]), n


def test_step_uses_gradient_at_perturbed_weights():
    model, x, y = _setup()
    ref = copy.deepcopy(model)
    awp = AWP(model, gamma=0.05)
    v = awp.calc(lambda m: F.cross_entropy(m(x), y))
    # Oracle: the gradient of a copy whose weights are set to w + v.
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in v:
                p.add_(v[n])
    F.cross_entropy(ref(x), y).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp.perturb(v)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    awp.restore()
    opt.step()
    for (n, p), (_, pr) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.detach(), w0[n] - 0.1 * pr.grad)
