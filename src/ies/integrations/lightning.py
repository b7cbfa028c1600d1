"""PyTorch Lightning integration: a Callback that runs IES around ``Trainer.fit``.

Wiring (three lines in your code):

1. build the train loader on ``IndexedDataset`` with ``sampler=callback.sampler()``
   inside ``train_dataloader()``;
2. return ``ies_output(idx, per_sample_losses)`` from ``training_step``;
3. ``Trainer(callbacks=[callback], reload_dataloaders_every_n_epochs=1,
   use_distributed_sampler=False)``.

Epoch lengths change with IES. ``reload_dataloaders_every_n_epochs=1`` is Lightning's
documented way to say so: it calls ``train_dataloader()`` again at every epoch start
(after the callback's ``step()``), and Lightning itself recounts the batches, the
validation interval and the progress bar. ``use_distributed_sampler=False`` keeps
Lightning from wrapping the sampler in a ``DistributedSampler`` under DDP: the
``ActiveSampler`` shards the active set itself. The callback checks both in ``setup``.

The callback records the losses (``on_train_batch_end``), runs the probe pass and
``step()`` at ``on_train_epoch_end``, logs the :class:`~ies.EpochStats` through
``LightningModule.log_dict`` (so every logger gets them, under ``ies/``), and saves its
state in Lightning checkpoints. Under DDP it uses :class:`~ies.distributed.DistributedIES`
so every rank holds the same state. Only public Lightning API is used (callback hooks,
``trainer.world_size``/``global_rank``/``num_training_batches``/``train_dataloader``,
``trainer.should_stop``).

Example:
    >>> ies_cb = IESCallback(len(train_set), loss_fn=nn.CrossEntropyLoss(reduction="none"), target_saving=0.4)
    >>> class Model(L.LightningModule):
    ...     def train_dataloader(self):
    ...         return DataLoader(IndexedDataset(train_set), sampler=ies_cb.sampler(), batch_size=64)
    ...     def training_step(self, batch, batch_idx):
    ...         idx, (x, y) = batch
    ...         return ies_output(idx, F.cross_entropy(self(x), y, reduction="none"))
    >>> L.Trainer(max_epochs=30, callbacks=[ies_cb], reload_dataloaders_every_n_epochs=1,
    ...           use_distributed_sampler=False).fit(Model())
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from . import require, rule_for_run

require("lightning.pytorch", "lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from .. import IES, EpochStats, IESConfig  # noqa: E402
from ..distributed import DistributedIES  # noqa: E402
from ..sampler import ActiveSampler  # noqa: E402
from ..state import check_record  # noqa: E402
from ..training import EpochProgressLR  # noqa: E402

__all__ = ["IESCallback", "ies_output"]

_STATE_VERSION = 1


def ies_output(indices: Tensor, losses: Tensor, *, reduction: str = "mean", **extra: Any) -> Dict[str, Any]:
    """What ``training_step`` returns so the :class:`IESCallback` sees per-sample losses.

    ``{"loss": losses.mean(), "ies_indices": indices, "ies_losses": losses.detach(), **extra}``;
    Lightning backpropagates ``"loss"`` and hands the dict to ``on_train_batch_end``.
    ``reduction`` is ``"mean"`` or ``"sum"``.

    Example:
        >>> def training_step(self, batch, batch_idx):
        ...     idx, (x, y) = batch
        ...     return ies_output(idx, F.cross_entropy(self(x), y, reduction="none"))
    """
    check_record(indices, losses)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    loss = losses.mean() if reduction == "mean" else losses.sum()
    return {"loss": loss, "ies_indices": indices, "ies_losses": losses.detach(), **extra}


def _flatten(obj: Any) -> List[Any]:
    if isinstance(obj, Mapping):
        return [x for v in obj.values() for x in _flatten(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flatten(v)]
    return [] if obj is None else [obj]


def _samplers_of(loader: Any) -> List[Any]:
    out = []
    for attr in ("sampler", "batch_sampler"):
        s = getattr(loader, attr, None)
        if s is not None:
            out.append(s)
            inner = getattr(s, "sampler", None)
            if inner is not None:
                out.append(inner)
    return out


class IESCallback(Callback):
    """Instance-dependent Early Stopping for ``lightning.Trainer``.

    Args:
        num_samples: training-set size; the callback builds a
            :class:`~ies.distributed.DistributedIES` (a plain tracker in one process) from
            ``config`` and ``**rule`` (any :class:`~ies.IESConfig` field: ``threshold``,
            ``target_saving``, ``probe_every``, ...).
        config: an :class:`~ies.IESConfig`; ``**rule`` fields override it.
        tracker: or pass your own tracker (a ``DistributedIES`` for multi-process runs).
        loss_fn: ``loss_fn(model(x), y)`` per sample (``reduction="none"``) for the probe
            pass over excluded samples; or
        forward: ``forward(model, batch) -> per-sample losses`` for other batch structures.
            ``batch`` is a collated batch of the raw dataset items (no indices).
        probe_dataset: dataset the probe pass reads (default: the train loader's).
        probe_collate_fn, probe_batch_size: probe loader settings.
        shuffle, seed, drop_last: defaults for :meth:`sampler`.
        log_stats: log the epoch statistics via ``pl_module.log_dict`` under ``prefix``.

    Example:
        >>> cb = IESCallback(len(train_set), loss_fn=nn.CrossEntropyLoss(reduction="none"), target_saving=0.4)
    """

    def __init__(
        self,
        num_samples: Optional[int] = None,
        config: Optional[IESConfig] = None,
        *,
        tracker: Optional[IES] = None,
        loss_fn: Optional[Callable[..., Tensor]] = None,
        forward: Optional[Callable[[torch.nn.Module, Any], Tensor]] = None,
        probe_dataset: Any = None,
        probe_collate_fn: Optional[Callable] = None,
        probe_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        log_stats: bool = True,
        prefix: str = "ies/",
        **rule: Any,
    ) -> None:
        super().__init__()
        if (num_samples is None) == (tracker is None):
            raise ValueError("pass either num_samples=len(train_set) or tracker=DistributedIES(...), not both or neither")
        if tracker is not None and (rule or config is not None):
            raise ValueError(f"rule parameters {sorted(rule) or ['config']} go to the tracker you built, not to IESCallback")
        if loss_fn is None and forward is None:
            raise ValueError(
                "IESCallback needs loss_fn(outputs, targets) (reduction='none') or forward(model, batch) "
                "to probe the excluded samples at each epoch end"
            )
        if probe_batch_size < 1:
            raise ValueError(f"probe_batch_size must be >= 1, got {probe_batch_size}")
        self._num_samples = num_samples
        self._rule = (config, rule)
        if tracker is None and rule_for_run(config, rule, None) == rule_for_run(config, rule, 1):
            tracker = DistributedIES(num_samples, **rule_for_run(config, rule, None))  # validates, names valid fields
        # else: a rule planned over the run (target_saving, annealing) gets Trainer.max_epochs in setup()
        self.ies: IES = tracker  # type: ignore[assignment]
        self.loss_fn = loss_fn
        self.forward = forward
        self.probe_dataset = probe_dataset
        self.probe_collate_fn = probe_collate_fn
        self.probe_batch_size = probe_batch_size
        self.sampler_kwargs = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last}
        self.log_stats = log_stats
        self.prefix = prefix
        self.last_stats: Optional[EpochStats] = None
        self._world = (1, 0)
        self._in_epoch = False
        self._recorded = 0
        self._batches = 0
        self._dataset: Any = None

    # ------------------------------------------------------------- user-facing
    def sampler(self, **kwargs: Any) -> ActiveSampler:
        """The train sampler: ``DataLoader(IndexedDataset(ds), sampler=callback.sampler(), ...)``.

        Sharded over the Trainer's processes (call it inside ``train_dataloader()``).
        ``kwargs`` override ``shuffle``, ``seed``, ``drop_last``.
        """
        opts = {**self.sampler_kwargs, **kwargs}
        world, rank = self._world
        if world == 1:  # not set up yet, or one process: ask the process group
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                world, rank = dist.get_world_size(), dist.get_rank()
        opts.setdefault("num_replicas", world)
        opts.setdefault("rank", rank)
        return ActiveSampler(self.ies, **opts)

    def record(self, indices: Tensor, losses: Tensor) -> Tensor:
        """Record per-sample losses from ``training_step`` directly (instead of ``ies_output``)."""
        self._recorded += int(losses.shape[0]) if isinstance(losses, Tensor) and losses.dim() == 1 else 0
        return self.ies.record(indices, losses)

    # ------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if self.ies is None:
            if trainer.max_epochs is None or trainer.max_epochs < 1:
                raise ValueError("target_saving / anneal_fraction plan over the run: pass total_epochs=... to "
                                 "IESCallback, or Trainer(max_epochs=...)")
            self.ies = DistributedIES(self._num_samples, **rule_for_run(*self._rule, trainer.max_epochs))
        problems = []
        if trainer.reload_dataloaders_every_n_epochs != 1:
            problems.append(
                f"reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}: IES changes the "
                "epoch length, and Lightning recounts the batches only when it reloads the train loader"
            )
        world = int(trainer.world_size)
        if world > 1 and not isinstance(self.ies, DistributedIES):
            problems.append(f"{world} processes but a single-process tracker: pass num_samples=... (the callback "
                            "builds a DistributedIES) or tracker=DistributedIES(...)")
        if problems:
            raise ValueError(
                "IESCallback cannot run with this Trainer: " + "; ".join(problems) + ". Build it as "
                "Trainer(callbacks=[ies_callback], reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, ...)"
            )
        self._world = (world, int(trainer.global_rank))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._check_loader(trainer)
        if self.ies.epoch != trainer.current_epoch:
            warnings.warn(
                f"IES is at epoch {self.ies.epoch} but the Trainer at {trainer.current_epoch}: was the checkpoint "
                "saved without this callback? IES continues from its own state.", stacklevel=2,
            )

    def _check_loader(self, trainer: Any) -> None:
        loaders = _flatten(trainer.train_dataloader)
        found, sampler = None, None
        for dl in loaders:
            for s in _samplers_of(dl):
                if isinstance(s, ActiveSampler) and s.tracker is self.ies:
                    found, sampler = dl, s
        if found is None:
            wrapped = any(isinstance(s, torch.utils.data.DistributedSampler) for dl in loaders for s in _samplers_of(dl))
            hint = (" Lightning replaced it with a DistributedSampler: pass Trainer(use_distributed_sampler=False)."
                    if wrapped else "")
            raise ValueError(
                "the train DataLoader does not use this callback's sampler: build it as "
                "DataLoader(IndexedDataset(train_set), sampler=ies_callback.sampler(), batch_size=...) in "
                "train_dataloader()." + hint
            )
        if sampler.num_replicas != trainer.world_size:
            raise ValueError(
                f"the sampler shards over {sampler.num_replicas} process(es) but the Trainer runs {trainer.world_size}: "
                "call ies_callback.sampler() inside train_dataloader() (the processes exist by then)"
            )
        self._dataset = found.dataset
        if len(self._dataset) != self.ies.num_samples:
            raise ValueError(
                f"the train dataset has {len(self._dataset)} samples but IES was built for {self.ies.num_samples}; "
                "pass num_samples=len(train_set)"
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._in_epoch = True
        self._recorded = 0
        self._batches = 0
        if trainer.current_epoch > 0:
            self._check_loader(trainer)  # reloaded: train_dataloader() may build a different loader each epoch
        n = trainer.num_training_batches  # recounted by Lightning for this epoch's loader
        if n != float("inf"):
            steps = math.ceil(n / max(1, int(trainer.accumulate_grad_batches)))
            for cfg in trainer.lr_scheduler_configs:
                if isinstance(cfg.scheduler, EpochProgressLR) and cfg.interval == "step":
                    cfg.scheduler.begin_epoch(steps, trainer.current_epoch)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batches += 1
        if isinstance(outputs, Mapping) and "ies_indices" in outputs and "ies_losses" in outputs:
            self.record(outputs["ies_indices"], outputs["ies_losses"])

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._recorded == 0 and self._batches > 0:
            raise ValueError(
                "no per-sample losses reached IES this epoch: return ies_output(idx, per_sample_losses) "
                "from training_step (or call ies_callback.record(idx, losses) there)"
            )
        dataset = self.probe_dataset if self.probe_dataset is not None else self._dataset
        ctx = getattr(getattr(trainer, "precision_plugin", None), "forward_context", contextlib.nullcontext)
        with ctx():
            stats = self.ies.end_epoch(
                pl_module, dataset, self.loss_fn, forward=self.forward, batch_size=self.probe_batch_size,
                collate_fn=self.probe_collate_fn,
            )
        self._in_epoch = False
        self.last_stats = stats
        if self.log_stats:
            pl_module.log_dict({f"{self.prefix}{k}": float(v) for k, v in stats.as_dict().items() if v is not None},
                               on_step=False, on_epoch=True, sync_dist=self._world[0] > 1)  # equal on all ranks
        max_epochs = trainer.max_epochs
        last = max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs
        if self.ies.num_active == 0 and not last:
            # Lightning ends fit() on an empty train loader; say why, and stop here on purpose.
            trainer.should_stop = True
            if trainer.global_rank == 0:
                warnings.warn(
                    f"IES: every sample is mastered after epoch {trainer.current_epoch}; the next train loader would "
                    "be empty and Lightning ends fit() then, so IESCallback stops training now. To train longer, "
                    "lower threshold / target_saving.", stacklevel=2,
                )

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        if self._in_epoch and isinstance(self.ies, DistributedIES):
            self.ies.sync()  # mid-epoch checkpoint: gather every rank's losses (Lightning dumps on all ranks)
        return {"version": _STATE_VERSION, "tracker": self.ies.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "tracker" not in state_dict:
            raise ValueError("IESCallback state has no 'tracker' entry; was it saved by IESCallback.state_dict()?")
        self.ies.load_state_dict(state_dict["tracker"])
