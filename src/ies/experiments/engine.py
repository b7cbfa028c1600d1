"""The training loop behind the ``ies`` command: any registered method on in-memory data.

Fairness between methods: the same seed gives the same initial weights and the same
data order (a permutation seeded ``seed + epoch``, filtered to the samples a method
trains, so survivors keep their relative order). Training wall time counts the training
loop and the forward-only probe pass, never test or validation evaluation.
Test data is never augmented.

A run can be checkpointed after every epoch (:func:`run_training`'s ``on_checkpoint``)
and continued from such a checkpoint (``resume``); on CPU the continued run's metrics
equal an uninterrupted run's exactly, wall-time columns aside.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..policies import SelectionPolicy, build_policy
from ..probing import probe_losses
from ..sampler import active_order
from .augment import BatchAugment
from .config import RunConfig
from .data import TensorData, load_dataset
from .models import build_model
from .tasks import evaluate, per_sample_losses, task_for_data

__all__ = ["EngineCallback", "EpochContext", "RunResult", "TrainingDiverged", "run_training", "check_run",
           "load_run_data", "build_optimizer", "evaluate", "per_sample_losses", "model_for_data", "summarize",
           "CHECKPOINT_FORMAT", "PER_STEP_SCHEDULES"]

CHECKPOINT_FORMAT = 1  # bump when the checkpoint's keys change
# Schedules set per training step from the fractional epoch (epoch + batch / batches), so a linear decay
# reaches zero at the end of the run (Li et al. 2020, "Budgeted Training"); the others change once per epoch.
PER_STEP_SCHEDULES = ("adam-lin0", "sgd-lin0")


class TrainingDiverged(RuntimeError):
    """Every training loss of an epoch was NaN or infinite (and ``allow_nonfinite`` was off)."""


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
    if name in ("adam", "adamw", "adam-cos", "adam-lin0"):
        opt: torch.optim.Optimizer = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=lr, weight_decay=wd)
        if name == "adam-cos":
            return opt, lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / e))
        if name == "adam-lin0":
            return opt, lambda epoch: max(0.0, 1.0 - epoch / e)
        return opt, lambda epoch: 1.0
    momentum = 0.9 if name in ("sgd", "sgd-lin0") else 0.0
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    if name == "sgd-lin0":
        return opt, lambda epoch: max(0.0, 1.0 - epoch / e)
    if name == "sgd-f":
        return opt, lambda epoch: 1.0
    if name == "sgd-l":  # lr -> lr/10 linearly over the run
        return opt, lambda epoch: 1.0 - 0.9 * min(epoch / max(e - 1, 1), 1.0)
    if name == "sgd-m":  # milestones at 1/3 and 2/3 of the run (paper: 50, 100 of 150)
        return opt, lambda epoch: 0.1 ** (int(epoch >= e / 3) + int(epoch >= 2 * e / 3))
    if name == "sgd-e":
        return opt, lambda epoch: 0.96 ** epoch
    return opt, lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / e))  # "sgd": cosine


def model_for_data(cfg: RunConfig, data: TensorData) -> nn.Module:
    x = data.x_train
    if data.image:
        return build_model(cfg.model, num_classes=data.num_classes, in_channels=x.shape[1], image_size=x.shape[-1])
    return build_model(cfg.model, num_classes=data.num_classes, input_length=x.shape[-1])


def load_run_data(cfg: RunConfig) -> TensorData:
    """The dataset ``cfg`` names, at its sizes and split."""
    return load_dataset(cfg.dataset, data_dir=cfg.data_dir, train_size=cfg.train_size,
                        val_fraction=cfg.val_fraction, data_seed=cfg.data_seed)


@dataclass
class _Run:
    """The live state of one run (built by :func:`_setup`)."""

    cfg: RunConfig
    data: TensorData
    dev: torch.device
    model: nn.Module
    opt: torch.optim.Optimizer
    lr_factor: Callable[[int], float]
    base_lrs: List[float]
    policy: SelectionPolicy
    aug: Optional[BatchAugment]
    tensors: Dict[str, Optional[Tensor]]  # x/y of train, test, val on the device
    task: Any  # losses, reduce, correct, evaluate (experiments/tasks.py; dense ones in dense/tasks.py)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    train_total: float = 0.0
    probe_total: float = 0.0


def _setup(cfg: RunConfig, data: TensorData) -> _Run:
    """Model, optimizer, policy and device tensors; every mismatch is a ``ValueError`` here, before training."""
    dev = torch.device(cfg.device)  # RunConfig.validate has checked it exists
    torch.manual_seed(cfg.seed)  # same seed -> same initial weights for every method
    model = model_for_data(cfg, data).to(dev)
    example = data.x_train[:2].to(dev)
    try:
        with torch.no_grad():
            model.eval()(example)
    except RuntimeError as e:
        raise ValueError(f"model {cfg.model!r} cannot take {cfg.dataset} inputs of shape {tuple(example.shape[1:])} "
                         f"({str(e).splitlines()[0]}); pick a model made for this dataset (`ies list`)") from None
    model.train()  # an eval-mode forward without grad draws no random numbers and changes no weight
    opt, lr_factor = build_optimizer(cfg, model)
    policy = build_policy(cfg.method, len(data), total_epochs=cfg.epochs, seed=cfg.seed, **cfg.method_params)
    policy.check_model(model, example)
    has_val = data.x_val is not None and data.x_val.shape[0] > 0
    tensors = {
        "xtr": data.x_train.to(dev), "ytr": data.y_train.to(dev), "xte": data.x_test.to(dev),
        "yte": data.y_test.to(dev), "xva": data.x_val.to(dev) if has_val else None,
        "yva": data.y_val.to(dev) if has_val else None,
    }
    aug = BatchAugment(seed=cfg.seed) if (cfg.augment and data.image) else None
    task = task_for_data(data.task, data.num_classes, bool(cfg.augment))
    return _Run(cfg, data, dev, model, opt, lr_factor, [g["lr"] for g in opt.param_groups], policy, aug, tensors, task)


def check_run(cfg: RunConfig, data: Optional[TensorData] = None) -> TensorData:
    """Validate ``cfg`` against its data before any training (``ValueError`` naming the fix); returns the data."""
    cfg = cfg.resolved()
    data = load_run_data(cfg) if data is None else data
    run = _setup(cfg, data)
    if run.tensors["xva"] is None:  # a method that watches validation accuracy says so when an epoch closes
        with warnings.catch_warnings():  # a throwaway policy closing an empty epoch: its warnings mean nothing
            warnings.simplefilter("ignore")
            run.policy.close_epoch(val_accuracy=None)
    return data


def _train_epoch(run: _Run, epoch: int, callbacks: Sequence[EngineCallback]) -> Dict[str, Any]:
    """One pass over the samples the method trains; the sums stay on the device until the end."""
    cfg, model, policy, opt, dev = run.cfg, run.model, run.policy, run.opt, run.dev
    xtr, ytr = run.tensors["xtr"], run.tensors["ytr"]
    model.train()
    order = active_order(policy.train_mask(), epoch=epoch, seed=cfg.seed).to(dev)
    loss_sum, correct, finite = (torch.zeros((), device=dev) for _ in range(3))
    seen = 0
    per_step = cfg.optimizer in PER_STEP_SCHEDULES
    for s in range(0, order.numel(), cfg.batch_size):
        if per_step:
            factor = run.lr_factor(epoch + s / order.numel())
            for g, lr0 in zip(opt.param_groups, run.base_lrs):
                g["lr"] = lr0 * factor
        idx = order[s : s + cfg.batch_size]
        x, y = xtr[idx], ytr[idx]
        if run.aug is not None:
            x = run.aug(x)
        x = policy.transform_inputs(x)
        selected = policy.selects_next_batch()
        if selected:  # Selective Backprop: forward all, backprop a subset
            model.eval()
            with torch.no_grad():
                sel_losses = run.task.losses(model(x), y)
            model.train()
            keep = policy.select(idx, sel_losses)
            policy.record(idx, sel_losses, backpropagated=int(keep.sum()), forward_only=idx.numel())
            idx, x, y = idx[keep], x[keep], y[keep]
            if idx.numel() == 0:
                continue
        out = model(x)
        losses = run.task.losses(out, y)
        w = policy.batch_weights(idx)
        loss = run.task.reduce(losses * w.to(losses) if w is not None else losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for cb in callbacks:
            cb.after_backward(model, idx, losses.detach())
        opt.step()
        if not selected:
            policy.record(idx, losses)
        loss_sum += losses.detach().sum()
        finite += torch.isfinite(losses.detach()).sum()
        correct += run.task.correct(out.detach(), y)
        seen += idx.numel()
    return {"loss_sum": float(loss_sum), "correct": float(correct), "finite": int(finite), "seen": seen}


def _probe(run: _Run) -> None:
    """Forward-only losses of the samples the method asks about (counted in wall time)."""
    idx = run.policy.indices_to_probe()
    if idx.numel():
        t0 = time.perf_counter()
        losses = probe_losses(run.model, (run.tensors["xtr"], run.tensors["ytr"]), idx, run.task.losses,
                              batch_size=run.cfg.score_batch_size)
        run.policy.record_probe(idx, losses.cpu(), seconds=time.perf_counter() - t0)


def _epoch(run: _Run, epoch: int, callbacks: Sequence[EngineCallback]) -> Dict[str, Any]:
    """Train, probe, evaluate and close epoch ``epoch`` (0-based); returns its metrics row."""
    factor = run.lr_factor(epoch)
    for g, lr0 in zip(run.opt.param_groups, run.base_lrs):
        g["lr"] = lr0 * factor
    t0 = time.perf_counter()
    tr = _train_epoch(run, epoch, callbacks)
    t1 = time.perf_counter()
    _probe(run)
    t2 = time.perf_counter()
    run.train_total += t1 - t0
    run.probe_total += t2 - t1
    t = run.tensors
    test_loss, test_acc = run.task.evaluate(run.model, t["xte"], t["yte"], run.cfg.eval_batch_size)  # not timed
    val_acc = run.task.evaluate(run.model, t["xva"], t["yva"], run.cfg.eval_batch_size)[1] if t["xva"] is not None else None
    stats = run.policy.close_epoch(val_accuracy=val_acc)
    seen, wall = max(tr["seen"], 1), run.train_total + run.probe_total
    row = {
        "epoch": epoch + 1, "lr": run.opt.param_groups[0]["lr"],
        "train_loss": tr["loss_sum"] / seen, "train_acc": 100.0 * tr["correct"] / seen,
        "test_loss": test_loss, "test_acc": test_acc, "val_acc": val_acc,
        "active": len(run.data) - stats["excluded"],
        **{k: v for k, v in stats.items() if k != "epoch"},
        "train_seconds": t1 - t0, "probe_seconds": t2 - t1, "wall_seconds": wall,
        "probe_share": run.probe_total / wall if wall > 0 else 0.0,
        "nonfinite_train_losses": tr["seen"] - tr["finite"],
    }
    for cb in callbacks:
        extra = cb.epoch_end(EpochContext(epoch + 1, run.model, run.data, run.policy, run.cfg, row))
        if extra:
            row.update(extra)
    return row


def _state(run: _Run) -> Dict[str, Any]:
    """A flat checkpoint of everything the next epoch depends on."""
    return {
        "format": CHECKPOINT_FORMAT, "config": run.cfg.to_dict(), "epochs_done": len(run.rows),
        "model": run.model.state_dict(), "optimizer": run.opt.state_dict(), "base_lrs": list(run.base_lrs),
        "policy": run.policy.state_dict(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if run.dev.type == "cuda" else None,
        "augment_rng": run.aug.generator.get_state() if run.aug is not None else None,
        "rows": [dict(r) for r in run.rows], "train_seconds": run.train_total, "probe_seconds": run.probe_total,
    }


def _load_state(run: _Run, state: Dict[str, Any]) -> None:
    """Restore a checkpoint from :func:`_state` (it must come from the same config)."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an ies checkpoint of format {CHECKPOINT_FORMAT}; start the run again without --resume")
    if state["config"] != run.cfg.to_dict():
        diff = sorted(k for k in state["config"] if state["config"][k] != run.cfg.to_dict().get(k))
        raise ValueError(f"the checkpoint was written by a run with other settings ({', '.join(diff)}); "
                         "resume with the run's own config")
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.base_lrs = list(state["base_lrs"])
    run.policy.load_state_dict(state["policy"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if run.aug is not None and state.get("augment_rng") is not None:
        run.aug.generator.set_state(state["augment_rng"])
    run.rows = [dict(r) for r in state["rows"]]
    run.train_total, run.probe_total = float(state["train_seconds"]), float(state["probe_seconds"])


def run_training(
    cfg: RunConfig,
    data: Optional[TensorData] = None,
    *,
    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None,
    keep_model: bool = False,
    callbacks: Sequence[EngineCallback] = (),
    on_checkpoint: Optional[Callable[[Dict[str, Any]], None]] = None,
    resume: Optional[Dict[str, Any]] = None,
    allow_nonfinite: bool = False,
) -> RunResult:
    """Train ``cfg.model`` on ``cfg.dataset`` with ``cfg.method``; one row of metrics per epoch.

    ``on_checkpoint(state)`` gets a checkpoint after every epoch (after ``on_epoch``);
    ``resume`` is such a state: training continues after its last epoch. An epoch in which
    every training loss is NaN or infinite raises :class:`TrainingDiverged` unless
    ``allow_nonfinite``.
    """
    cfg = cfg.resolved()
    data = load_run_data(cfg) if data is None else data
    run = _setup(cfg, data)
    if resume is not None:
        _load_state(run, resume)
    while len(run.rows) < cfg.epochs and not run.policy.stop_training:
        row = _epoch(run, len(run.rows), callbacks)
        run.rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if on_checkpoint is not None:
            on_checkpoint(_state(run))
        if row["nonfinite_train_losses"] == row["backpropagated"] > 0 and not allow_nonfinite:
            raise TrainingDiverged(
                f"epoch {row['epoch']}: every training loss was NaN or infinite (lr {cfg.lr}); lower the "
                "learning rate, or pass --allow-nonfinite to keep training anyway")
    summary = summarize(run.rows, run.policy, run.tensors["xva"] is not None)
    # The sizes actually trained and tested on (``data`` may be given ready-made, whatever
    # ``cfg.train_size`` says), so a saved run never misreports its data.
    xva = run.tensors["xva"]
    summary.update(num_train=len(data), num_val=0 if xva is None else int(xva.shape[0]),
                   num_test=int(run.tensors["xte"].shape[0]))
    tracker = getattr(run.policy, "tracker", None)
    per_sample = tracker.per_sample() if tracker is not None else {}
    return RunResult(config=cfg.to_dict(), epochs=run.rows, summary=summary, per_sample=per_sample,
                     model=run.model if keep_model else None, policy=run.policy)


def summarize(rows: List[Dict[str, Any]], policy: SelectionPolicy, has_val: bool) -> Dict[str, Any]:
    """Headline numbers: final-epoch test accuracy (and the validation-chosen epoch's, if any)."""
    last = rows[-1]
    best_test = max(rows, key=lambda r: r["test_acc"])
    probe_s = sum(r["probe_seconds"] for r in rows)
    out: Dict[str, Any] = {
        "method": policy.name,
        "final_test_acc": last["test_acc"],
        "final_test_loss": last["test_loss"],
        "best_test_acc_for_paper_comparison_only": best_test["test_acc"],
        "best_test_epoch": best_test["epoch"],
        "train_seconds": sum(r["train_seconds"] for r in rows),
        "probe_seconds": probe_s,
        "wall_seconds": last["wall_seconds"],
        "probe_share": probe_s / last["wall_seconds"] if last["wall_seconds"] > 0 else 0.0,
        "reincluded": sum(int(r.get("reincluded") or 0) for r in rows),
        "saving_note": policy.saving_note,
        **policy.summary(),
    }
    if has_val:
        chosen = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
        out["val_chosen_epoch"] = chosen["epoch"]
        out["val_chosen_test_acc"] = chosen["test_acc"]
    return out
