"""The training loop behind the ``ies`` command: any registered method on in-memory data.

Fairness between methods: the same seed gives the same initial weights and the same
data order (a permutation seeded ``seed + epoch``, filtered to the samples a method
trains, so survivors keep their relative order). Training wall time counts the training
loop and the forward-only scoring pass, never test or validation evaluation.
Test data is never augmented.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..policies import SelectionPolicy, build_policy
from ..sampler import active_order
from .augment import BatchAugment
from .config import RunConfig
from .data import TensorData, load_dataset
from .models import build_model

__all__ = ["EngineCallback", "EpochContext", "RunResult", "run_training", "build_optimizer", "evaluate", "per_sample_losses", "model_for_data"]


@dataclass
class EpochContext:
    """What an :class:`EngineCallback` sees at the end of an epoch."""

    epoch: int  # 1-based epoch just finished
    model: nn.Module
    data: TensorData
    policy: SelectionPolicy
    config: RunConfig
    row: Dict[str, Any]  # the epoch's metrics so far; a callback may add keys


class EngineCallback:
    """Instrumentation hooks (analyses use these); the defaults do nothing.

    Hooks run outside the timed regions except ``after_backward``, which runs inside the
    training loop (keep it cheap, or accept that it is counted).
    """

    def after_backward(self, model: nn.Module, indices: Tensor, losses: Tensor) -> None:
        """After ``loss.backward()``, before ``optimizer.step()`` (gradients are populated)."""

    def epoch_end(self, ctx: EpochContext) -> Optional[Dict[str, Any]]:
        """After evaluation; returned keys are added to the epoch's metrics row."""
        return None


@dataclass
class RunResult:
    """A finished run: its resolved config, one row per epoch, the summary and per-sample arrays."""

    config: Dict[str, Any]
    epochs: List[Dict[str, Any]]
    summary: Dict[str, Any]
    per_sample: Dict[str, Tensor] = field(default_factory=dict)
    model: Optional[nn.Module] = None
    policy: Optional[SelectionPolicy] = None


def build_optimizer(cfg: RunConfig, model: nn.Module) -> Tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The paper's optimizers; returns the optimizer and an epoch -> lr-factor function."""
    name, lr, wd, e = cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.epochs
    params = model.parameters()
    if name in ("adam", "adamw", "adam-cos"):
        opt: torch.optim.Optimizer = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=lr, weight_decay=wd)
        if name == "adam-cos":
            return opt, lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / e))
        return opt, lambda epoch: 1.0
    momentum = 0.9 if name == "sgd" else 0.0
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "sgd-f":
        return opt, lambda epoch: 1.0
    if name == "sgd-l":  # lr -> lr/10 linearly over the run
        return opt, lambda epoch: 1.0 - 0.9 * min(epoch / max(e - 1, 1), 1.0)
    if name == "sgd-m":  # milestones at 1/3 and 2/3 of the run (paper: 50, 100 of 150)
        return opt, lambda epoch: 0.1 ** (int(epoch >= e / 3) + int(epoch >= 2 * e / 3))
    if name == "sgd-e":
        return opt, lambda epoch: 0.96 ** epoch
    return opt, lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / e))  # "sgd": cosine


def per_sample_losses(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tuple[Tensor, Tensor]:
    """Forward-only losses and correctness ``(M,)`` in eval mode, batched."""
    was = model.training
    model.eval()
    losses, correct = [], []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            out = model(x[s : s + batch_size])
            losses.append(F.cross_entropy(out, y[s : s + batch_size], reduction="none"))
            correct.append(out.argmax(1) == y[s : s + batch_size])
    model.train(was)
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tuple[float, float]:
    """Mean loss and accuracy (in %) on ``(x, y)``."""
    losses, correct = per_sample_losses(model, x, y, batch_size)
    return float(losses.mean()), 100.0 * float(correct.float().mean())


def model_for_data(cfg: RunConfig, data: TensorData) -> nn.Module:
    x = data.x_train
    if data.image:
        return build_model(cfg.model, num_classes=data.num_classes, in_channels=x.shape[1], image_size=x.shape[-1])
    return build_model(cfg.model, num_classes=data.num_classes, input_length=x.shape[-1])


def run_training(
    cfg: RunConfig,
    data: Optional[TensorData] = None,
    *,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    keep_model: bool = False,
    callbacks: Sequence[EngineCallback] = (),
) -> RunResult:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.method``; one row of metrics per epoch."""
    cfg = cfg.resolved()
    if data is None:
        data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                            val_fraction=cfg.val_fraction, data_seed=cfg.data_seed)
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)  # same seed -> same initial weights for every method
    model = model_for_data(cfg, data).to(dev)
    opt, lr_factor = build_optimizer(cfg, model)
    base_lrs = [g["lr"] for g in opt.param_groups]
    n = len(data)
    policy = build_policy(cfg.method, n, total_epochs=cfg.epochs, seed=cfg.seed, **cfg.method_params)
    policy.check_model(model, data.x_train[:2].to(dev))
    xtr, ytr = data.x_train.to(dev), data.y_train.to(dev)
    xte, yte = data.x_test.to(dev), data.y_test.to(dev)
    has_val = data.x_val is not None and data.x_val.shape[0] > 0
    xva = data.x_val.to(dev) if has_val else None
    yva = data.y_val.to(dev) if has_val else None
    aug = BatchAugment(seed=cfg.seed) if (cfg.augment and data.image) else None
    rows: List[Dict[str, Any]] = []
    train_total = score_total = 0.0
    for epoch in range(cfg.epochs):
        factor = lr_factor(epoch)
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * factor
        model.train()
        t0 = time.perf_counter()
        order = active_order(policy.train_mask(), epoch=epoch, seed=cfg.seed).to(dev)
        loss_sum, correct, seen = torch.zeros((), device=dev), torch.zeros((), device=dev), 0
        for s in range(0, order.numel(), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            x, y = xtr[idx], ytr[idx]
            if aug is not None:
                x = aug(x)
            x = policy.transform_inputs(x)
            forward_only = 0
            if policy.needs_selection_pass:  # Selective Backprop: forward all, backprop a subset
                model.eval()
                with torch.no_grad():
                    sel_losses = F.cross_entropy(model(x), y, reduction="none")
                model.train()
                keep = policy.select(idx, sel_losses)
                policy.record(idx, sel_losses, backpropagated=int(keep.sum()), forward_only=idx.numel())
                idx, x, y = idx[keep], x[keep], y[keep]
                if idx.numel() == 0:
                    continue
            out = model(x)
            losses = F.cross_entropy(out, y, reduction="none")
            w = policy.batch_weights(idx)
            loss = (losses * w.to(losses)).mean() if w is not None else losses.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for cb in callbacks:
                cb.after_backward(model, idx, losses.detach())
            opt.step()
            if not policy.needs_selection_pass:
                policy.record(idx, losses)
            loss_sum += losses.detach().sum()
            correct += (out.detach().argmax(1) == y).sum()
            seen += idx.numel()
        train_s = time.perf_counter() - t0
        # Forward-only scoring pass for samples the method left out (counted in wall time).
        t1 = time.perf_counter()
        sidx = policy.indices_to_score()
        if sidx.numel():
            sidx_d = sidx.to(dev)
            sl, _ = per_sample_losses(model, xtr[sidx_d], ytr[sidx_d], cfg.score_batch_size)
            policy.record_scores(sidx, sl.cpu())
        score_s = time.perf_counter() - t1
        train_total += train_s
        score_total += score_s
        # Evaluation: not timed, never augmented.
        test_loss, test_acc = evaluate(model, xte, yte, cfg.eval_batch_size)
        val_acc = evaluate(model, xva, yva, cfg.eval_batch_size)[1] if has_val else None
        stats = policy.end_epoch(val_accuracy=val_acc)
        row = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": 100.0 * float(correct) / max(seen, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "val_acc": val_acc,
            "active": n - stats["excluded"],
            **{k: v for k, v in stats.items() if k != "epoch"},
            "train_seconds": train_s,
            "score_seconds": score_s,
            "wall_seconds": train_total + score_total,
        }
        for cb in callbacks:
            extra = cb.epoch_end(EpochContext(epoch + 1, model, data, policy, cfg, row))
            if extra:
                row.update(extra)
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if policy.stop_training:
            break
    summary = summarize(rows, policy, has_val)
    # The sizes actually trained and tested on (``data`` may be given ready-made, whatever
    # ``cfg.train_size`` says), so a saved run never misreports its data.
    summary.update(num_train=n, num_val=0 if xva is None else int(xva.shape[0]), num_test=int(xte.shape[0]))
    per_sample = {}
    tracker = getattr(policy, "tracker", None)
    if tracker is not None:
        per_sample = tracker.per_sample()
    return RunResult(config=cfg.to_dict(), epochs=rows, summary=summary, per_sample=per_sample,
                     model=model if keep_model else None, policy=policy)


def summarize(rows: List[Dict[str, Any]], policy: SelectionPolicy, has_val: bool) -> Dict[str, Any]:
    """Headline numbers: final-epoch test accuracy (and the validation-chosen epoch's, if any)."""
    last = rows[-1]
    best_test = max(rows, key=lambda r: r["test_acc"])
    out: Dict[str, Any] = {
        "method": policy.name,
        "final_test_acc": last["test_acc"],
        "final_test_loss": last["test_loss"],
        "best_test_acc_for_paper_comparison_only": best_test["test_acc"],
        "best_test_epoch": best_test["epoch"],
        "train_seconds": sum(r["train_seconds"] for r in rows),
        "score_seconds": sum(r["score_seconds"] for r in rows),
        "wall_seconds": last["wall_seconds"],
        "saving_note": policy.saving_note,
        **policy.summary(),
    }
    if has_val:
        chosen = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
        out["val_chosen_epoch"] = chosen["epoch"]
        out["val_chosen_test_acc"] = chosen["test_acc"]
    return out
