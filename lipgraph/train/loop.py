"""The training loop for every method, on the CPU or a GPU (``device``); DistributedDataParallel when launched by
``torchrun`` (NCCL between GPUs, gloo between CPU processes).

Methods (docs/training.md):
* ``plain``: cross-entropy.
* ``lmt``: pairwise LMT ("LMT++") with ``c`` ramped linearly over the first epochs, one power
  iteration per layer per step on persistent input-shaped vectors.
* ``groupsort``: MaxMin + Björck-orthonormal layers, multi-class hinge with margin ``sqrt2 eps`` (or
  ``gs_loss="margin-ce"``: temperature cross-entropy with that margin). On MNIST, large batches with a
  larger lr and a one-cycle schedule pay off on a CPU: Björck costs the same per step whatever the batch.
* ``awp``: PGD adversarial training (L2 or Linf at ``eps``) plus adversarial weight perturbation.
* ``lmt+awp``: the LMT loss on clean inputs under adversarial weight perturbation.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipgraph.errors import LipgraphError
from lipgraph.progress import iterate
from lipgraph.train.archs import LipNet, build_model
from lipgraph.train.awp import AWP
from lipgraph.train.data import Splits
from lipgraph.train.device import dist_backend, exact_float32, resolve_device
from lipgraph.train.losses import hinge_loss, lmt_loss, margin_ce_loss, pairwise_radius
from lipgraph.train.pgd import pgd

METHODS = ("plain", "lmt", "groupsort", "awp", "lmt+awp")
SCHEDULES = ("constant", "cosine", "onecycle")
GS_LOSSES = ("hinge", "margin-ce")


@dataclass
class TrainConfig:
    arch: str = "mlp"
    method: str = "lmt"
    epochs: int = 20
    c: float = 1.0  # LMT: the radius the guard aims at
    eps: float = 0.5  # training radius: hinge margin (groupsort), PGD radius (awp), progress figure
    gamma: float = 0.01  # AWP's relative weight perturbation
    awp_warmup: int = 0  # first epoch (0-based) with AWP, as AT-AWP's --awp-warmup
    awp_proxy_lr: float = 0.01
    attack_norm: str = "l2"
    pgd_steps: int = 10
    c_ramp_epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    bjorck_iters: int = 10
    lr_schedule: str = "constant"  # constant | cosine (to 0 over the run) | onecycle (10% warm-up, cosine)
    gs_loss: str = "hinge"  # groupsort loss: hinge (margin sqrt2 eps) | margin-ce (tau-CE with that margin)
    tau: float = 4.0  # margin-ce temperature
    seed: int = 0
    eval_eps: float | None = None  # radius of the per-epoch validation figure (default: eps)
    device: str = "auto"  # auto | cpu | cuda (lipgraph.train.device)
    log: Callable[[str], None] | None = field(default=None, repr=False)
    progress: bool = field(default=False, repr=False)  # a batch bar per epoch (only on a terminal, not in CI)

    def hyperparameters(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("log", None)
        d.pop("progress", None)  # how the run was shown, not how the model was trained
        d.pop("device", None)  # where it ran: the exported file must not depend on it
        d.pop("eval_eps", None)  # what the epoch log reports, not how the model was trained
        return d


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    bound: float
    val_cert: float  # fraction certified at eps with the trainer's (uncertified) estimate
    seconds: float


def _dist(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(dist_backend(device))
    if world > 1:
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _c_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """Linear ramp of ``c`` from ~0 to ``cfg.c`` over ``c_ramp_epochs`` (LMT's Goyal-style warm-up)."""
    if cfg.c_ramp_epochs <= 0:
        return cfg.c
    t = (epoch * steps_per_epoch + step + 1) / (cfg.c_ramp_epochs * steps_per_epoch)
    return cfg.c * min(1.0, t)


def _loss_fn(cfg: TrainConfig, c_now: float) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    def fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if cfg.method in ("lmt", "lmt+awp"):
            logits, l_h, w_last = net(x, with_bound=True)
            return lmt_loss(logits, y, l_h, w_last, c_now)
        logits = net(x)
        if cfg.method == "groupsort":
            if cfg.gs_loss == "margin-ce":
                return margin_ce_loss(logits, y, cfg.eps, cfg.tau)
            return hinge_loss(logits, y, cfg.eps)
        return F.cross_entropy(logits, y)

    return fn


def _lr_factor(schedule: str, t: float) -> float:
    """Multiplier of the base lr at training progress ``t`` in [0, 1]."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        warm = 0.1
        if t < warm:
            return 0.1 + 0.9 * t / warm
        return 0.5 * (1.0 + math.cos(math.pi * (t - warm) / (1.0 - warm)))
    return 1.0


@torch.no_grad()
def evaluate(model: LipNet, x: np.ndarray, y: np.ndarray, eps: float, batch: int = 512) -> tuple[float, float, float]:
    """(accuracy, fraction with trainer-estimated pairwise radius >= eps, trainer's bound estimate)."""
    model.eval()
    model.refresh(30)  # plain/groupsort training never steps the vectors; the estimate needs them
    l_h = float(model.sub_bound(update=False))
    w_last = model.layers[-1].effective_weight()
    device = w_last.device
    correct = cert = 0
    for i in range(0, len(x), batch):
        xb, yb = torch.from_numpy(x[i:i + batch]).to(device), torch.from_numpy(y[i:i + batch]).to(device)
        logits = model(xb)
        correct += int((logits.argmax(1) == yb).sum())
        cert += int((pairwise_radius(logits, yb, l_h, w_last) >= eps).sum())
    n = max(1, len(x))
    return correct / n, cert / n, model.bound_estimate()


def train(cfg: TrainConfig, data: Splits) -> tuple[LipNet, list[EpochStats]]:
    """Train on ``data.x_train``; report on ``data.x_val`` each epoch (rank 0 only under DDP)."""
    if cfg.method not in METHODS:
        raise LipgraphError(f"unknown --method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.lr_schedule not in SCHEDULES:
        raise LipgraphError(f"unknown --lr-schedule {cfg.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if cfg.gs_loss not in GS_LOSSES:
        raise LipgraphError(f"unknown --gs-loss {cfg.gs_loss!r}; choose one of {', '.join(GS_LOSSES)}")
    if cfg.attack_norm not in ("l2", "linf"):
        raise LipgraphError("--attack-norm must be l2 or linf")
    device = resolve_device(cfg.device)
    exact_float32(device)
    rank, world = _dist(device)
    log = cfg.log if (cfg.log is not None and rank == 0) else (lambda _s: None)
    torch.manual_seed(cfg.seed)
    # built on the CPU from the CPU generator, then moved: the same initial weights on every device
    model = build_model(cfg.arch, data.in_shape, data.n_classes, cfg.method, cfg.bjorck_iters).to(device)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    use_awp = cfg.method in ("awp", "lmt+awp") and cfg.gamma > 0
    awp = AWP(model, cfg.gamma, cfg.awp_proxy_lr) if use_awp else None

    x_all, y_all = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    n_per_rank = len(x_all) // world
    steps = max(1, math.ceil(n_per_rank / cfg.batch_size))
    history: list[EpochStats] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        # every rank draws the same permutation, then takes its own equal-length share
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        perm = torch.randperm(len(x_all), generator=g)[: n_per_rank * world][rank::world].to(device)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for s in iterate(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                         on=cfg.progress and rank == 0):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            if len(idx) == 0:
                continue
            x, y = x_all[idx], y_all[idx]
            for grp in opt.param_groups:
                grp["lr"] = cfg.lr * _lr_factor(cfg.lr_schedule, (epoch * steps + s) / (cfg.epochs * steps))
            loss_of = _loss_fn(cfg, _c_at(cfg, epoch, s, steps))
            if cfg.method == "awp":
                model.eval()
                x = pgd(model, x, y, cfg.eps, cfg.attack_norm, cfg.pgd_steps)
                model.train()
            perturbed = awp is not None and epoch >= cfg.awp_warmup
            if perturbed:
                v = awp.calc(lambda m, x=x, y=y, f=loss_of: f(m, x, y))
                awp.perturb(v)
            opt.zero_grad(set_to_none=True)
            loss = loss_of(net, x, y)
            loss.backward()
            if perturbed:
                awp.restore()  # exact: the step below is taken at w with the gradient from w + v
            opt.step()
            with torch.no_grad():
                tot_loss += float(loss) * len(idx)
                tot_correct += int((model(x).argmax(1) == y).sum()) if cfg.method == "awp" else 0
                seen += len(idx)
        train_acc = float("nan")
        if cfg.method != "awp":
            train_acc, _, _ = evaluate(model, data.x_train[:2000], data.y_train[:2000], cfg.eps)
        else:
            train_acc = tot_correct / max(1, seen)  # on the adversarial examples
        eval_eps = cfg.eps if cfg.eval_eps is None else cfg.eval_eps
        val_acc, val_cert, bound = evaluate(model, data.x_val, data.y_val, eval_eps)
        st = EpochStats(epoch + 1, tot_loss / max(1, seen), train_acc, val_acc, bound, val_cert,
                        time.perf_counter() - t0)
        history.append(st)
        log(f"epoch {st.epoch:3d}/{cfg.epochs}  loss {st.loss:.4f}  train acc {st.train_acc:.3f}  "
            f"val acc {st.val_acc:.3f}  bound~ {st.bound:.4g}  val cert@{eval_eps:g}~ {st.val_cert:.3f}  "
            f"({st.seconds:.1f}s)")
    model.eval()
    return model, history


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
