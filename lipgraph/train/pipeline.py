"""Data -> training -> ONNX export -> analyzer check -> certified evaluation on the test split."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from lipgraph.errors import LipgraphError
from lipgraph.train.attack_eval import AttackConfig, flips_inside_radii, robust_accuracy
from lipgraph.train.data import Splits, load, write_test_split
from lipgraph.train.export import check_with_analyzer, export_onnx, exported_bound_estimate, plain_model
from lipgraph.train.loop import EpochStats, TrainConfig, stderr_log, train


@dataclass
class TrainResult:
    model_path: str
    test_path: str
    trainer_bound: float
    analyzer_bound: float | None
    history: list[EpochStats]
    seconds: float
    certificate: dict[str, Any] | None = None
    robust_accuracy: dict[str, float] | None = None  # PGD-L2 at each certify eps (--attack-eval), eps_key -> fraction
    radius_check: dict[str, int] | None = None  # PGD inside each certified radius (--attack-eval): attacked, flipped
    warnings: list[str] = field(default_factory=list)
    rank: int = 0  # under torchrun only rank 0 exports and reports


def certify_test(model_path: str, x, y, eps: list[float], radii_out: list | None = None) -> dict[str, Any]:
    """``lipgraph.certify`` on the test split: clean and certified accuracy, median radius.

    ``radii_out``, when given, receives the per-sample radii (0 for misclassified samples).
    """
    from lipgraph.certify import certify

    cert = certify(model_path, x, y, eps=eps)
    if radii_out is not None:
        radii_out.append(cert.radii * cert.correct)
    return {"lipschitz_bound": cert.lipschitz_bound, "clean_accuracy": cert.clean_accuracy,
            "certified_accuracy": dict(cert.certified_accuracy), "median_radius": cert.median_radius,
            "radius_method": cert.radius_method}


def run(cfg: TrainConfig, dataset: str, out: str, test_out: str | None = None, legacy_exporter: bool = False,
        maxmin_export: str = "split", threads: int | None = 1, data: Splits | None = None,
        certify_eps: list[float] | None = None, limit_train: int | None = None,
        limit_test: int | None = None, attack: AttackConfig | None = None) -> TrainResult:
    if threads:
        torch.set_num_threads(threads)
    if cfg.log is None:
        cfg.log = stderr_log
    t0 = time.perf_counter()
    if data is None:
        data = load(dataset, seed=cfg.seed, limit_train=limit_train, limit_test=limit_test)
    model, history = train(cfg, data)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    train_seconds = time.perf_counter() - t0
    test_path = test_out or f"{os.path.splitext(out)[0]}.test.npz"
    result = TrainResult(out, test_path, float("nan"), None, history, train_seconds, rank=rank)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if rank != 0:
        return result
    # export from a CPU copy (float64 Björck and power iteration there): the file does not depend on the device
    model = model.to("cpu")
    result.trainer_bound = exported_bound_estimate(model)  # of the weights written, not the training ones
    meta = {"method": cfg.method, "arch": cfg.arch, "dataset": data.name, "epochs": cfg.epochs,
            "hyperparameters": json.dumps(cfg.hyperparameters(), sort_keys=True),
            "trainer_bound_estimate": f"{result.trainer_bound:.9g}",
            "note": "trainer_bound_estimate is a power-iteration estimate, not a certificate; "
                    "run `lipgraph certify` for one"}
    exported = plain_model(model, maxmin_export)
    if attack is not None and certify_eps:
        # before the export, so the file's metadata records it; the attack runs on the exported layers
        from lipgraph.certificate import eps_key

        robust = robust_accuracy(exported, data.x_test, data.y_test, certify_eps, attack)
        result.robust_accuracy = {eps_key(e): r for e, r in robust.items()}
        meta["pgd_robust_accuracy"] = json.dumps(result.robust_accuracy, sort_keys=True)
        meta["pgd_attack"] = f"L2, {attack.steps} steps, {attack.restarts} restarts, pixels in [0, 1]"
    export_onnx(exported, data.in_shape, out, meta, legacy=legacy_exporter)
    write_test_split(test_path, data.x_test, data.y_test)
    try:
        result.analyzer_bound, result.warnings = check_with_analyzer(out, result.trainer_bound)
    except LipgraphError as exc:
        msg = f"the analyzer cannot bound the exported model yet: {str(exc).splitlines()[0]}"
        result.warnings.append(msg)
        print(f"lipgraph train: warning: {msg}", file=sys.stderr)
        return result
    if certify_eps:
        radii: list = []
        result.certificate = certify_test(out, data.x_test, data.y_test, certify_eps, radii)
        if attack is not None:
            # the certificate's own check: PGD inside every certified radius must flip nothing
            result.radius_check = flips_inside_radii(exported, data.x_test, data.y_test, radii[0], attack)
    return result
