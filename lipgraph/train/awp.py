"""Adversarial weight perturbation (Wu, Xia, Wang 2020), as the AWP code (``AT_AWP/utils_awp.py``) does it.

Per step: copy the model into a proxy, take one SGD ascent step on the loss there, and for every weight
with ``dim > 1`` (conv and linear; no biases) set ``v_l = gamma ||w_l|| d_l / ||d_l||`` with ``d_l`` the
proxy's change. Perturb ``w <- w + v``, compute loss and gradient there, restore ``w`` EXACTLY (from a
saved copy, not by subtracting ``v``: floating-point ``(w + v) - v`` is not always ``w``), then take the
optimiser step at ``w`` with the gradient from ``w + v``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


class AWP:
    def __init__(self, model: nn.Module, gamma: float = 0.01, proxy_lr: float = 0.01):
        self.model = model
        self.gamma = gamma
        self.proxy_lr = proxy_lr
        self.proxy = copy.deepcopy(model)
        self._saved: dict[str, torch.Tensor] = {}

    def _weights(self, net: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in net.named_parameters() if p.dim() > 1 and "weight" in n}

    def calc(self, loss_fn: Callable[[nn.Module], torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-layer perturbation ``v`` from one ascent step of ``loss_fn`` on the proxy."""
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        opt = torch.optim.SGD(self.proxy.parameters(), lr=self.proxy_lr)
        opt.zero_grad(set_to_none=True)
        (-loss_fn(self.proxy)).backward()
        opt.step()
        w_model, w_proxy = self._weights(self.model), self._weights(self.proxy)
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, w in w_model.items():
                d = w_proxy[n] - w
                dn = d.norm()
                if dn > 0:
                    out[n] = self.gamma * w.norm() / dn * d
        return out

    @torch.no_grad()
    def perturb(self, v: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        self._saved = {n: params[n].detach().clone() for n in v}
        for n, d in v.items():
            params[n].add_(d)

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        for n, w in self._saved.items():
            params[n].copy_(w)
        self._saved = {}
