"""IES with PyTorch Lightning, written as a project is: a LightningDataModule, a LightningModule,
and IESCallback + ies_output; checkpoint and resume.

    python examples/lightning_example.py --epochs 8
    python examples/lightning_example.py --epochs 8 --devices 2      # DDP on 2 CPU processes (ddp_spawn)

Needs ``pip install instance-early-stopping[lightning]``. Trains, saves ``last.ckpt``
(the IES state is inside), then resumes from it for ``--resume-epochs`` more epochs.
The lines marked ``# IES`` are all it takes.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as L

from ies import IndexedDataset
from ies.integrations.lightning import IESCallback, ies_output, ies_sampler


def make_data(n: int = 1024, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + 2.0 * (y.float() * 2 - 1).unsqueeze(1)
    flip = torch.rand(n, generator=g) < 0.1
    return TensorDataset(x, torch.where(flip, 1 - y, y))


class Data(L.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def setup(self, stage: str) -> None:
        self.train_set = make_data()  # the data exists from here on (the callback learns its size below)
        self.val_set = make_data(256, seed=1)

    def train_dataloader(self) -> DataLoader:
        # IES: indices + the callback's active sampler; called again every epoch
        # (Trainer(reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False))
        return DataLoader(IndexedDataset(self.train_set), batch_size=self.batch_size,
                          sampler=ies_sampler(self.trainer, self.train_set))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        idx, (x, y) = batch  # IES: IndexedDataset puts each sample's index first
        return ies_output(idx, F.cross_entropy(self(x), y, reduction="none"))  # IES: per-sample losses

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def run(epochs: int, devices: int, root: str, ckpt_path: Optional[str] = None) -> IESCallback:
    cb = IESCallback(loss_fn=nn.CrossEntropyLoss(reduction="none"), threshold=3e-2)  # IES (size: from the data)
    ck = L.callbacks.ModelCheckpoint(dirpath=root, save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
        callbacks=[cb, ck], use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1,  # IES
        logger=L.loggers.CSVLogger(root, name="logs"), enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=root,
    )
    trainer.fit(Classifier(), datamodule=Data(), ckpt_path=ckpt_path)
    if devices == 1:  # after ddp_spawn the main process's callback is a copy from before fit
        s = cb.summary
        print(f"run: {s['epochs_run']} of {s['planned_epochs']} epochs, backprop saved {s['backprop_saved']:.1%}, "
              f"val_acc {float(trainer.callback_metrics['val_acc']):.3f}")
    return cb


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--resume-epochs", type=int, default=2, help="epochs to train after resuming from last.ckpt")
    p.add_argument("--devices", type=int, default=1, help="CPU processes (2: DDP with ddp_spawn)")
    p.add_argument("--out", default=None, help="checkpoint/log folder (default: a temporary one)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    root = args.out or tempfile.mkdtemp(prefix="ies_lightning_")
    cb = run(args.epochs, args.devices, root)
    # After ddp_spawn the main process's callback is a copy from before fit: read the checkpoint.
    state = torch.load(f"{root}/last.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "IESCallback" in k)["tracker"]
    for s in saved["history_log"]:
        print(f"epoch {s['epoch']:2d}  active {s['active']:4d}  excluded {s['excluded']:4d}  "
              f"backprop saved {s['backprop_saved']:6.1%}")
    if args.resume_epochs > 0:
        cb = run(args.epochs + args.resume_epochs, args.devices, root, ckpt_path=f"{root}/last.ckpt")
        state = torch.load(f"{root}/last.ckpt", weights_only=False)
        saved = next(v for k, v in state["callbacks"].items() if "IESCallback" in k)["tracker"]
        print(f"resumed from epoch {args.epochs} to {saved['epoch']}: excluded now {int(saved['excluded'].sum())}")
    print(f"done: checkpoints and logs in {root}")


if __name__ == "__main__":
    main()
