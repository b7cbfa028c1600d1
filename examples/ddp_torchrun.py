"""IES under DDP, launched with torchrun: DistributedIES keeps every rank's state identical.

    torchrun --standalone --nproc_per_node=2 examples/ddp_torchrun.py --epochs 10
    # resume: --save ies.pt on a first run, --load ies.pt on the next

Each rank trains its shard of the active set (the sampler filters, then shards), records
the losses it sees; ``end_epoch`` splits the probe pass across ranks and ``step()``
merges all ranks' losses with one gather, so every rank derives the same mastered set.
Runs on CPU with gloo (NCCL when CUDA is available).
"""

from __future__ import annotations

import argparse
import os
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from ies import IndexedDataset
from ies.distributed import DistributedIES


def make_data(n: int = 1024, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * (y.float() * 2 - 1).unsqueeze(1)
    flip = torch.rand(n, generator=g) < 0.1
    return TensorDataset(x, torch.where(flip, 1 - y, y))


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threshold", type=float, default=3e-2)
    p.add_argument("--save", default=None, help="write the IES state here at the end (rank 0)")
    p.add_argument("--load", default=None, help="resume IES from this state file")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)

    train_set = make_data()
    model = DDP(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).to(device),
                device_ids=[device.index] if cuda else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = DistributedIES(len(train_set), threshold=args.threshold, device=device)
    if args.load:
        tracker.load_state_dict(torch.load(args.load, map_location="cpu", weights_only=True))
    loader = DataLoader(IndexedDataset(train_set), sampler=tracker.sampler(seed=0), batch_size=64)

    start = tracker.epoch
    for epoch in range(start, start + args.epochs):
        model.train()
        per_rank = len(loader.sampler)
        for idx, (x, y) in loader:  # this rank's shard of the active set; same length on every rank
            x, y = x.to(device), y.to(device)
            loss = tracker.record(idx, F.cross_entropy(model(x), y, reduction="none")).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        stats = tracker.end_epoch(model, train_set, nn.CrossEntropyLoss(reduction="none"), device=device)
        if rank == 0:
            print(f"epoch {stats.epoch:2d}  active {stats.active:4d}  excluded {stats.excluded:4d}  "
                  f"per rank {per_rank:4d}  backprop saved {stats.backprop_saved:6.1%}", flush=True)

    masks = [torch.empty_like(tracker.excluded, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(masks, tracker.excluded.to(torch.uint8))
    agree = all(torch.equal(m, masks[0]) for m in masks)
    if rank == 0:
        print(f"ranks agree on the mastered set: {agree} ({int(masks[0].sum())} excluded, {world} ranks)", flush=True)
        if args.save:
            torch.save(tracker.state_dict(), args.save)
    dist.barrier()
    dist.destroy_process_group()
    if not agree:
        raise SystemExit("ranks disagree on the mastered set")


if __name__ == "__main__":
    main()
