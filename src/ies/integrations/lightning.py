"""PyTorch Lightning integration: a Callback that runs IES around ``Trainer.fit``.

Wiring (three lines in your code):

1. build the train loader on ``IndexedDataset`` with ``sampler=callback.sampler()``
   inside ``train_dataloader()`` (of the LightningModule, or of a LightningDataModule:
   ``sampler=ies_sampler(self.trainer, self.train_set)``, which also tells a callback built
   without ``num_samples`` the dataset's size, once ``setup()`` has made the data);
2. return ``ies_output(idx, per_sample_losses)`` from ``training_step``;
3. ``Trainer(callbacks=[callback], reload_dataloaders_every_n_epochs=1,
   use_distributed_sampler=False)``.

Epoch lengths change with IES: ``reload_dataloaders_every_n_epochs=1`` (Lightning's documented
way to say so) calls ``train_dataloader()`` again at every epoch start, after the callback's
``step()``, and Lightning recounts the batches, the validation interval and the progress bar.
``use_distributed_sampler=False``: the ``ActiveSampler`` shards the active set itself under DDP.

The callback records the losses (``on_train_batch_end``), runs the probe pass and
``step()`` at ``on_train_epoch_end`` (inside ``trainer.precision_plugin.forward_context()``,
the autocast the training step had), logs the :class:`~ies.EpochStats` through
``LightningModule.log_dict`` (so the Trainer's loggers get them, under ``ies/``; none
with ``logger=False``), and saves its state in Lightning checkpoints. When every sample
is mastered it stops the run with an :class:`~ies.IESWarning` saying so; after ``fit``,
``callback.summary`` holds the run's savings over the planned ``max_epochs``. Under DDP
it uses :class:`~ies.distributed.DistributedIES` so every rank holds the same state. The
tracker is ``callback.tracker``. Only public Lightning API is used (callback hooks,
``trainer.world_size``/``global_rank``/``num_training_batches``/``train_dataloader``/
``precision_plugin``/``loggers``, ``trainer.should_stop``).

Example (``train_set``: a map-style dataset of ``(x, y)``; with a DataModule see :func:`ies_sampler`):
    >>> import lightning.pytorch as L
    >>> from ies import IndexedDataset
    >>> ies_cb = IESCallback(loss_fn=nn.CrossEntropyLoss(reduction="none"), target_saving=0.3)
    >>> class Model(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.net(x)
    ...     def train_dataloader(self):
    ...         return DataLoader(IndexedDataset(train_set), sampler=ies_cb.sampler(train_set), batch_size=64)
    ...     def training_step(self, batch, batch_idx):
    ...         idx, (x, y) = batch
    ...         return ies_output(idx, F.cross_entropy(self(x), y, reduction="none"))
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> trainer = L.Trainer(max_epochs=10, callbacks=[ies_cb], reload_dataloaders_every_n_epochs=1,
    ...                     use_distributed_sampler=False, logger=False, enable_checkpointing=False,
    ...                     enable_progress_bar=False, enable_model_summary=False)
    >>> trainer.fit(Model())
    >>> ies_cb.summary["epochs_run"], round(ies_cb.summary["backprop_saved"], 2)
    (10, 0.3)
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from . import all_excluded_message, require, rule_for_run

require("lightning.pytorch", "lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from .. import IES, EpochStats, IESConfig, IESWarning  # noqa: E402
from ..distributed import DistributedIES  # noqa: E402
from ..sampler import ActiveSampler  # noqa: E402
from ..state import check_record  # noqa: E402
from ..training import EpochProgressLR  # noqa: E402

__all__ = ["IESCallback", "ies_output", "ies_sampler"]

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
    if isinstance(obj, (Mapping, list, tuple)):
        return [x for v in (obj.values() if isinstance(obj, Mapping) else obj) for x in _flatten(v)]
    return [] if obj is None else [obj]


def _samplers_of(loader: Any) -> List[Any]:
    outer = [s for s in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)) if s is not None]
    return outer + [s.sampler for s in outer if getattr(s, "sampler", None) is not None]


class IESCallback(Callback):
    """Instance-dependent Early Stopping for ``lightning.Trainer``.

    Args:
        num_samples: training-set size; the callback builds a
            :class:`~ies.distributed.DistributedIES` (a plain tracker in one process) from
            ``config`` and ``**rule`` (any :class:`~ies.IESConfig` field: ``threshold``,
            ``target_saving``, ``probe_every``, ...). None: learned from the train set
            handed to :meth:`sampler` / :func:`ies_sampler` (a DataModule's, once it exists).
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

    Attributes: ``tracker`` (the :class:`~ies.IES`, None until the size is known),
    ``last_stats`` (the last :class:`~ies.EpochStats`), ``summary`` (after ``fit``: the
    run's savings over the planned epochs, epochs not run counted as saved).

    Example:
        >>> cb = IESCallback(loss_fn=nn.CrossEntropyLoss(reduction="none"), target_saving=0.3)
        >>> cb.tracker is None                            # built when the train set is known
        True
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
        if num_samples is not None and tracker is not None:
            raise ValueError("pass num_samples=len(train_set) or tracker=DistributedIES(...), not both")
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
        self._max_epochs: Optional[int] = None
        if tracker is None and rule_for_run(config, rule, None) == rule_for_run(config, rule, 1):
            DistributedIES(1, **rule_for_run(config, rule, None))  # validates now, naming the valid fields
            if num_samples is not None:
                tracker = DistributedIES(num_samples, **rule_for_run(config, rule, None))
        # else: a rule planned over the run (target_saving, annealing) gets Trainer.max_epochs in setup(),
        # and a callback without num_samples learns it from the train set (sampler(train_set))
        self.tracker: Optional[IES] = tracker
        self.loss_fn = loss_fn
        self.forward = forward
        self.probe_dataset = probe_dataset
        self.probe_collate_fn = probe_collate_fn
        self.probe_batch_size = probe_batch_size
        self.sampler_kwargs = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last}
        self.log_stats = log_stats
        self.prefix = prefix
        self.last_stats: Optional[EpochStats] = None
        self.summary: Optional[Dict[str, Any]] = None
        self._world = (1, 0)
        self._in_epoch = False
        self._recorded = 0
        self._batches = 0
        self._dataset: Any = None

    # ------------------------------------------------------------- user-facing
    def sampler(self, train_set: Any = None, **kwargs: Any) -> ActiveSampler:
        """The train sampler: ``DataLoader(IndexedDataset(ds), sampler=callback.sampler(ds), ...)``.

        Sharded over the Trainer's processes (call it inside ``train_dataloader()``).
        ``train_set`` tells a callback built without ``num_samples`` the dataset size (and is
        checked against it otherwise). ``kwargs`` override ``shuffle``, ``seed``, ``drop_last``.
        """
        if self.tracker is None:
            n = self._num_samples if self._num_samples is not None else (None if train_set is None else len(train_set))
            if n is None:
                raise ValueError("IESCallback was built without num_samples: pass the train set, "
                                 "sampler=ies_callback.sampler(train_set) (or ies_sampler(self.trainer, train_set))")
            self._build(n)
        if train_set is not None and len(train_set) != self._tracker().num_samples:
            raise ValueError(f"the train set has {len(train_set)} samples but IES was built for "
                             f"{self._tracker().num_samples}; pass num_samples=len(train_set) or leave it out")
        opts = {**self.sampler_kwargs, **kwargs}
        world, rank = self._world
        if world == 1:  # not set up yet, or one process: ask the process group
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                world, rank = dist.get_world_size(), dist.get_rank()
        opts.setdefault("num_replicas", world)
        opts.setdefault("rank", rank)
        return ActiveSampler(self.tracker, **opts)

    def record(self, indices: Tensor, losses: Tensor) -> Tensor:
        """Record per-sample losses from ``training_step`` directly (instead of ``ies_output``)."""
        self._recorded += int(losses.shape[0]) if isinstance(losses, Tensor) and losses.dim() == 1 else 0
        return self._tracker().record(indices, losses)

    def _build(self, n: int) -> None:
        self.tracker = DistributedIES(n, **rule_for_run(*self._rule, self._max_epochs))

    def _tracker(self) -> IES:
        if self.tracker is None:
            raise ValueError("IESCallback does not know the dataset size yet: build the train loader with "
                             "sampler=ies_callback.sampler(train_set) in train_dataloader(), or pass num_samples")
        return self.tracker

    # ------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 1 else None
        planned = rule_for_run(*self._rule, None) != rule_for_run(*self._rule, 1)
        if self.tracker is None and planned and self._max_epochs is None:
            raise ValueError("target_saving / anneal_fraction plan over the run: pass total_epochs=... to "
                             "IESCallback, or Trainer(max_epochs=...)")
        if self.tracker is None and self._num_samples is not None:
            self._build(self._num_samples)
        problems = []
        if trainer.reload_dataloaders_every_n_epochs != 1:
            problems.append(
                f"reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs}: IES changes the "
                "epoch length, and Lightning recounts the batches only when it reloads the train loader"
            )
        world = int(trainer.world_size)
        if world > 1 and self.tracker is not None and not isinstance(self.tracker, DistributedIES):
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
        if self._tracker().epoch != trainer.current_epoch:
            warnings.warn(
                f"IES is at epoch {self._tracker().epoch} but the Trainer at {trainer.current_epoch}: was the checkpoint "
                "saved without this callback? IES continues from its own state.", IESWarning, stacklevel=2,
            )

    def _check_loader(self, trainer: Any) -> None:
        loaders = _flatten(trainer.train_dataloader)
        found, sampler = None, None
        for dl in loaders:
            for s in _samplers_of(dl):
                if isinstance(s, ActiveSampler) and s.tracker is self.tracker and s.tracker is not None:
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
        if len(self._dataset) != self._tracker().num_samples:
            raise ValueError(
                f"the train dataset has {len(self._dataset)} samples but IES was built for {self._tracker().num_samples}; "
                "pass num_samples=len(train_set) or leave it out"
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
        tracker = self._tracker()
        dataset = self.probe_dataset if self.probe_dataset is not None else self._dataset
        with trainer.precision_plugin.forward_context():  # the training step's autocast; a break fails here
            stats = tracker.end_epoch(
                pl_module, dataset, self.loss_fn, forward=self.forward, batch_size=self.probe_batch_size,
                collate_fn=self.probe_collate_fn,
            )
        self._in_epoch = False
        self.last_stats = stats
        if self.log_stats:
            pl_module.log_dict({f"{self.prefix}{k}": float(v) for k, v in stats.as_dict().items() if v is not None},
                               on_step=False, on_epoch=True, sync_dist=self._world[0] > 1)  # equal on all ranks
        planned = self._max_epochs
        if tracker.num_active == 0 and (planned is None or tracker.epoch < planned):
            # Lightning ends fit() on an empty train loader without a word: IES stops here, and says why.
            trainer.should_stop = True
            if trainer.global_rank == 0:
                warnings.warn(all_excluded_message(tracker, stats.epoch, planned, "IESCallback"), IESWarning,
                              stacklevel=2)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        tracker = self._tracker()
        self.summary = {**tracker.books.summary(max(self._max_epochs or 0, tracker.epoch)),
                        "planned_epochs": self._max_epochs}
        if self.log_stats and tracker.epoch > 0:
            run = {f"{self.prefix}run_{k}": float(self.summary[k]) for k in ("epochs_run", "backprop_saved", "compute_saved")}
            for logger in trainer.loggers:  # log_dict is not allowed in on_train_end; the loggers are
                logger.log_metrics(run, step=trainer.global_step)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        tracker = self._tracker()
        if self._in_epoch and isinstance(tracker, DistributedIES):
            tracker.sync()  # mid-epoch checkpoint: gather every rank's losses (Lightning dumps on all ranks)
        return {"version": _STATE_VERSION, "tracker": tracker.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "tracker" not in state_dict:
            raise ValueError("IESCallback state has no 'tracker' entry; was it saved by IESCallback.state_dict()?")
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(f"IESCallback state has version {state_dict.get('version')!r}; this ies reads version "
                             f"{_STATE_VERSION}: resume with the ies version that saved the checkpoint")
        saved = state_dict["tracker"]
        if self.tracker is None:  # a callback without num_samples, restored before the data exists
            self._build(int(saved["excluded"].numel()))
        self._tracker().load_state_dict(saved)


def ies_sampler(trainer: Any, train_set: Any, **kwargs: Any) -> ActiveSampler:
    """The :class:`IESCallback`'s sampler, for a ``LightningDataModule.train_dataloader``.

    Finds the trainer's ``IESCallback`` and returns ``callback.sampler(train_set, **kwargs)``,
    so the DataModule needs no reference to the callback, and a callback built without
    ``num_samples`` learns the size here, after ``setup()`` made the data.

    Example:
        >>> import lightning.pytorch as L
        >>> from ies import IndexedDataset
        >>> class Data(L.LightningDataModule):
        ...     def setup(self, stage):
        ...         self.train_set = make_train_set()
        ...     def train_dataloader(self):
        ...         return DataLoader(IndexedDataset(self.train_set), batch_size=64,
        ...                           sampler=ies_sampler(self.trainer, self.train_set))
    """
    found = [cb for cb in trainer.callbacks if isinstance(cb, IESCallback)]
    if len(found) != 1:
        raise ValueError(f"the trainer has {len(found)} IESCallback(s); pass exactly one: "
                         "Trainer(callbacks=[IESCallback(...)], reload_dataloaders_every_n_epochs=1, ...)")
    return found[0].sampler(train_set, **kwargs)
