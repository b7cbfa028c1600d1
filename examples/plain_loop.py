"""IES in a plain PyTorch loop: the five-line integration (marked # IES below).

    python examples/plain_loop.py --epochs 15

Synthetic data: two Gaussian blobs with 10% flipped labels, so most samples are mastered
early (and leave backprop) while the noisy ones keep training.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import ies


def make_data(n: int = 2048, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * (y.float() * 2 - 1).unsqueeze(1)
    flip = torch.rand(n, generator=g) < 0.1
    return TensorDataset(x, torch.where(flip, 1 - y, y))


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threshold", type=float, default=3e-2, help="IES threshold delta (paper default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)

    train_set = make_data(seed=args.seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    tracker = ies.IES(len(train_set), threshold=args.threshold)  # IES 1: per-sample state
    loader = DataLoader(ies.IndexedDataset(train_set), sampler=tracker.sampler(seed=args.seed),  # IES 2: indices
                        batch_size=64)                                                           # + active sampler
    for epoch in range(args.epochs):
        model.train()
        for idx, (x, y) in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            loss = tracker.record(idx, losses).mean()  # IES 3: record per-sample losses
            opt.zero_grad()
            loss.backward()
            opt.step()
        stats = tracker.end_epoch(model, train_set, nn.CrossEntropyLoss(reduction="none"))  # IES 4: probe + step
        print(f"epoch {stats.epoch:2d}  active {stats.active:4d}  excluded {stats.excluded:4d}  "
              f"next active {stats.next_active:4d}  backprop saved {stats.backprop_saved:6.1%}")
    print(f"done: {args.epochs} epochs, backprop saved {tracker.history_log[-1].backprop_saved:.1%}")


if __name__ == "__main__":
    main()
