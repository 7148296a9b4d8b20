"""The loop under DistributedDataParallel with 2 CPU processes (gloo): ranks stay in sync and learn."""

import os
import socket

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from lipgraph.train.data import load
    from lipgraph.train.loop import TrainConfig, train

    data = load("digits", seed=0)
    model, hist = train(TrainConfig(arch="mlp", method="lmt", epochs=2, c=0.3, seed=0), data)
    torch.save({"state": model.state_dict(), "val_acc": hist[-1].val_acc}, os.path.join(out_dir, f"r{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_processes(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0 = torch.load(tmp_path / "r0.pt")
    r1 = torch.load(tmp_path / "r1.pt")
    for k, v in r0["state"].items():
        if k.endswith(".u"):
            continue  # power-iteration vectors are buffers; DDP broadcasts rank 0's at each forward
        assert torch.equal(v, r1["state"][k]), k
    assert r0["val_acc"] > 0.5  # two short epochs on half the data each: well above chance (0.1)
