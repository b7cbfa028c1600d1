"""PyTorch Lightning integration: a Callback that runs IES around ``Trainer.fit``.

Wiring (three lines in your code):

1. build the train loader on ``IndexedDataset`` with ``sampler=callback.sampler()``;
2. return ``ies_output(idx, per_sample_losses)`` from ``training_step``;
3. ``Trainer(callbacks=[callback], use_distributed_sampler=False)`` (the flag matters
   under DDP: Lightning would otherwise wrap the sampler in a DistributedSampler; the
   ``ActiveSampler`` shards the active set itself).

The callback records the losses (``on_train_batch_end``), runs the scoring pass and
``step()`` at ``on_train_epoch_end``, logs the :class:`~ies.EpochStats` through
``LightningModule.log_dict`` (so every logger gets them, under ``ies/``), and saves its
state in Lightning checkpoints. Under DDP it uses :class:`~ies.distributed.DistributedIES`
so every rank holds the same state.

Epoch lengths change with IES. The sampler reads the active set in ``__iter__``, so
``reload_dataloaders_every_n_epochs`` is not needed, but Lightning caches the number of
batches once; the callback refreshes it (``num_training_batches``, the loader limits,
``val_check_batch``) after every ``step()`` so shorter and longer epochs both run whole.

Example:
    >>> ies_cb = IESCallback(len(train_set), loss_fn=nn.CrossEntropyLoss(reduction="none"))
    >>> class Model(L.LightningModule):
    ...     def train_dataloader(self):
    ...         return DataLoader(IndexedDataset(train_set), sampler=ies_cb.sampler(), batch_size=64)
    ...     def training_step(self, batch, batch_idx):
    ...         idx, (x, y) = batch
    ...         return ies_output(idx, F.cross_entropy(self(x), y, reduction="none"))
    >>> L.Trainer(max_epochs=30, callbacks=[ies_cb], use_distributed_sampler=False).fit(Model())
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from . import require

require("lightning.pytorch", "lightning")

from lightning.pytorch.callbacks import Callback  # noqa: E402

from ..distributed import DistributedIES  # noqa: E402
from ..sampler import ActiveSampler  # noqa: E402
from ..tracker import EpochStats, InstanceEarlyStopping, check_record  # noqa: E402
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
    check_record(indices, losses, 0)
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
            :class:`~ies.distributed.DistributedIES` (a plain tracker in one process).
        tracker: or pass your own tracker (a ``DistributedIES`` for multi-process runs).
        loss_fn: ``loss_fn(model(x), y)`` per sample (``reduction="none"``) for the scoring
            pass over excluded samples; or
        forward: ``forward(model, batch) -> per-sample losses`` for other batch structures.
            ``batch`` is a collated batch of the raw dataset items (no indices).
        score_dataset: dataset the scoring pass reads (default: the train loader's).
        score_collate_fn, score_batch_size: scoring loader settings.
        shuffle, seed, drop_last: defaults for :meth:`sampler`.
        log_stats: log the epoch statistics via ``pl_module.log_dict`` under ``prefix``.
        **ies_kwargs: the rule's parameters (``threshold``, ``order``, ``window``, ...).

    Example:
        >>> cb = IESCallback(len(train_set), loss_fn=nn.CrossEntropyLoss(reduction="none"), threshold=1e-3)
    """

    def __init__(
        self,
        num_samples: Optional[int] = None,
        *,
        tracker: Optional[InstanceEarlyStopping] = None,
        loss_fn: Optional[Callable[..., Tensor]] = None,
        forward: Optional[Callable[[torch.nn.Module, Any], Tensor]] = None,
        score_dataset: Any = None,
        score_collate_fn: Optional[Callable] = None,
        score_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        log_stats: bool = True,
        prefix: str = "ies/",
        **ies_kwargs: Any,
    ) -> None:
        super().__init__()
        if (num_samples is None) == (tracker is None):
            raise ValueError("pass either num_samples=len(train_set) or tracker=DistributedIES(...), not both or neither")
        if tracker is not None and ies_kwargs:
            raise ValueError(f"rule parameters {sorted(ies_kwargs)} go to the tracker you built, not to IESCallback")
        if loss_fn is None and forward is None:
            raise ValueError(
                "IESCallback needs loss_fn(outputs, targets) (reduction='none') or forward(model, batch) "
                "to score the excluded samples at each epoch end"
            )
        if score_batch_size < 1:
            raise ValueError(f"score_batch_size must be >= 1, got {score_batch_size}")
        self.ies: InstanceEarlyStopping = tracker if tracker is not None else DistributedIES(num_samples, **ies_kwargs)
        self.loss_fn = loss_fn
        self.forward = forward
        self.score_dataset = score_dataset
        self.score_collate_fn = score_collate_fn
        self.score_batch_size = score_batch_size
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
        self._world = (int(trainer.world_size), int(trainer.global_rank))
        if self._world[0] > 1 and not isinstance(self.ies, DistributedIES):
            raise ValueError(
                f"training runs on {self._world[0]} processes but the tracker is a plain InstanceEarlyStopping: "
                "pass num_samples=... (the callback builds a DistributedIES) or tracker=DistributedIES(...)"
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
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
        if self.ies.epoch != trainer.current_epoch:
            warnings.warn(
                f"IES is at epoch {self.ies.epoch} but the Trainer at {trainer.current_epoch}: was the checkpoint "
                "saved without this callback? IES continues from its own state.", stacklevel=2,
            )

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._in_epoch = True
        self._recorded = 0
        self._batches = 0
        _refresh_num_batches(trainer)
        n = trainer.num_training_batches
        if n != float("inf"):
            steps = math.ceil(n / max(1, int(trainer.accumulate_grad_batches)))
            for cfg in getattr(trainer, "lr_scheduler_configs", []):
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
        dataset = self.score_dataset if self.score_dataset is not None else self._dataset
        ctx = getattr(getattr(trainer, "precision_plugin", None), "forward_context", contextlib.nullcontext)
        with ctx():
            stats = self.ies.end_epoch(
                pl_module, dataset, self.loss_fn, forward=self.forward, batch_size=self.score_batch_size,
                collate_fn=self.score_collate_fn,
            )
        self._in_epoch = False
        self.last_stats = stats
        if self.log_stats:
            pl_module.log_dict({f"{self.prefix}{k}": float(v) for k, v in stats.as_dict().items()},
                               on_step=False, on_epoch=True, sync_dist=self._world[0] > 1)  # equal on all ranks
        _refresh_num_batches(trainer)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> Dict[str, Any]:
        if self._in_epoch and isinstance(self.ies, DistributedIES):
            self.ies.sync()  # mid-epoch checkpoint: gather every rank's losses (Lightning dumps on all ranks)
        return {"version": _STATE_VERSION, "tracker": self.ies.state_dict()}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if "tracker" not in state_dict:
            raise ValueError("IESCallback state has no 'tracker' entry; was it saved by IESCallback.state_dict()?")
        self.ies.load_state_dict(state_dict["tracker"])


def _refresh_num_batches(trainer: Any) -> None:
    """Recompute what Lightning cached at ``setup_data`` from the loaders' current length."""
    fl = trainer.fit_loop
    cl = getattr(fl, "_combined_loader", None)
    if cl is None or not hasattr(cl, "flattened"):
        return
    from lightning.fabric.utilities.data import sized_len
    from lightning.pytorch.trainer.connectors.data_connector import _parse_num_batches
    from lightning.pytorch.trainer.states import RunningStage

    limits = []
    for dl in cl.flattened:
        n = sized_len(dl)
        limits.append(_parse_num_batches(RunningStage.TRAINING, float("inf") if n is None else n,
                                         trainer.limit_train_batches))
    if not limits:
        return
    cl.limits = limits
    mode = getattr(cl, "_mode", "max_size_cycle")
    total = min(limits) if mode == "min_size" else sum(limits) if mode == "sequential" else max(limits)
    # 0 batches would make Lightning end fit(); with 1 the empty epoch ends at once and the
    # epoch-end scoring pass can still bring samples back.
    fl.max_batches = total if total > 0 else 1
    if (getattr(trainer, "_val_check_time_interval", None) is None and isinstance(trainer.val_check_interval, float)
            and 0 < total < float("inf")):
        trainer.val_check_batch = max(1, int(total * trainer.val_check_interval))
