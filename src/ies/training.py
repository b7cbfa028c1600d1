"""Training details that meet IES: mixed precision, gradient accumulation, step-based LR schedules.

* Mixed precision: record the losses the autocast forward gives (bf16/fp16); the tracker
  stores them as float32. :func:`mixed_precision` picks bf16 on CPU, fp16 on CUDA.
* Gradient accumulation: record every micro-batch once, step the optimizer at
  :func:`is_accumulation_boundary` (the epoch's last batch included, since IES changes
  how many batches an epoch has). :func:`split_micro_batches` cuts one batch in chunks.
* Step-based LR schedules: excluded samples make epochs shorter, so a schedule planned
  in optimizer steps would stop short of its end. :class:`EpochProgressLR` drives the
  schedule by the fraction of the planned epochs done, each epoch counting the same
  however many steps it has; :func:`steps_per_epoch` gives that count.

Example:
    >>> sched = EpochProgressLR(opt, lambda p: 1.0 - p, total_epochs=epochs)  # linear decay to 0
    >>> for epoch in range(epochs):
    ...     sched.begin_epoch(steps_per_epoch(sampler, batch_size, accumulation_steps=accum), epoch)
    ...     for i, (idx, (x, y)) in enumerate(loader):
    ...         with mixed_precision("cpu"):
    ...             losses = tracker.record(idx, F.cross_entropy(model(x), y, reduction="none"))
    ...         (losses.mean() / accum).backward()
    ...         if is_accumulation_boundary(i, accum, len(loader)):
    ...             opt.step(); opt.zero_grad(); sched.step()
    ...     stats = tracker.end_epoch(model, train_set, loss_fn)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Sized, Union

import torch
from torch import Tensor
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "steps_per_epoch",
    "is_accumulation_boundary",
    "split_micro_batches",
    "mixed_precision",
    "EpochProgressLR",
]


def steps_per_epoch(sampler: Union[Sized, int], batch_size: int, *, drop_last: bool = False,
                    accumulation_steps: int = 1) -> int:
    """Optimizer steps this epoch for a sampler (or a sample count) of the current active set.

    ``len(ActiveSampler)`` is this epoch's (per-rank) count, so call this at each epoch start.

    Example:
        >>> steps_per_epoch(10, batch_size=4)                             # batches 4, 4, 2
        3
        >>> steps_per_epoch(10, batch_size=4, drop_last=True, accumulation_steps=2)
        1
    """
    n = sampler if isinstance(sampler, int) else len(sampler)
    if n < 0:
        raise ValueError(f"the sample count must be >= 0, got {n}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 (the DataLoader's batch_size), got {batch_size!r}")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an int >= 1 (1: no accumulation), got {accumulation_steps!r}")
    batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    return math.ceil(batches / accumulation_steps)


def is_accumulation_boundary(batch_idx: int, accumulation_steps: int, num_batches: int) -> bool:
    """Whether the optimizer steps after micro-batch ``batch_idx`` (0-based) of ``num_batches``.

    Every ``accumulation_steps`` micro-batches, and after the epoch's last one, so a
    short last cycle (IES changes the epoch length) is not carried into the next epoch.

    Example:
        >>> [is_accumulation_boundary(i, 3, 7) for i in range(7)]
        [False, False, True, False, False, True, True]
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    return (batch_idx + 1) % accumulation_steps == 0 or batch_idx + 1 == num_batches


def _first_tensor(obj: Any) -> Optional[Tensor]:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _slice(obj: Any, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[start:stop]
    if isinstance(obj, dict):
        return {k: _slice(v, start, stop) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_slice(v, start, stop) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(v, start, stop) for v in obj)
    return obj


def split_micro_batches(batch: Any, num_micro_batches: int) -> List[Any]:
    """Cut a batch (tensors, possibly nested in tuples/lists/dicts) into micro-batches along dim 0.

    Each sample lands in exactly one micro-batch, so recording each micro-batch once
    records every sample once. Gives ``min(num_micro_batches, batch size)`` chunks.

    Example:
        >>> for idx, (x, y) in split_micro_batches(batch, 4):   # batch = (idx, (x, y))
        ...     _ = tracker.record(idx, F.cross_entropy(model(x), y, reduction="none"))
    """
    if not isinstance(num_micro_batches, int) or num_micro_batches < 1:
        raise ValueError(f"num_micro_batches must be an int >= 1, got {num_micro_batches!r}")
    first = _first_tensor(batch)
    if first is None:
        raise ValueError("split_micro_batches needs a batch with at least one tensor (samples along dim 0)")
    b = int(first.shape[0])
    k = max(1, min(num_micro_batches, b))
    bounds = [int(c[0]) for c in torch.tensor_split(torch.arange(b), k)] + [b]
    return [_slice(batch, bounds[i], bounds[i + 1]) for i in range(k)]


def mixed_precision(device: Union[str, torch.device], dtype: Optional[torch.dtype] = None,
                    enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` for ``device`` with IES-friendly defaults: bf16 on CPU, fp16 on CUDA.

    Record the losses computed inside it as they are; the tracker stores float32. With
    fp16 on CUDA, scale the backward with ``torch.amp.GradScaler`` as usual.

    Example:
        >>> with mixed_precision("cpu"):
        ...     losses = F.cross_entropy(model(x), y, reduction="none")
        >>> _ = tracker.record(idx, losses)     # as they are; the tracker stores float32
    """
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=dev.type, dtype=dtype, enabled=enabled)


class EpochProgressLR(LRScheduler):
    """LR schedule driven by the fraction of the planned epochs done, not by the step count.

    ``lr = base_lr * lr_lambda(progress)`` with ``progress = (epoch + k / n) / total_epochs``
    in ``[0, 1]``, after step ``k`` of an epoch of ``n`` optimizer steps. Every epoch moves
    the schedule by ``1 / total_epochs`` however many steps it has, so the schedule ends
    where it was meant to (``lr_lambda(1.0)``) at the end of the last epoch even though IES
    shortens epochs. Call :meth:`step` after each optimizer step, as usual.

    Each epoch's step count comes from :meth:`begin_epoch` (call it at the epoch start)
    or from ``steps_in_epoch()``, a callable read at each epoch's first step, e.g.
    ``lambda: steps_per_epoch(sampler, batch_size)``.

    Args:
        optimizer: the optimizer.
        lr_lambda: ``progress -> multiplier`` (one, or one per param group).
        total_epochs: the planned number of epochs.
        steps_in_epoch: optional callable giving the current epoch's optimizer steps.

    Example:
        >>> sched = EpochProgressLR(opt, lambda p: 1 - p, total_epochs=10,
        ...                         steps_in_epoch=lambda: steps_per_epoch(sampler, 64))
        >>> # from a step-based schedule planned for S steps (e.g. Hugging Face's):
        >>> sched = EpochProgressLR(opt, lambda p: step_lambda(p * S), total_epochs=10)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_lambda: Union[Callable[[float], float], Sequence[Callable[[float], float]]],
        total_epochs: int,
        *,
        steps_in_epoch: Optional[Callable[[], int]] = None,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(total_epochs, int) or isinstance(total_epochs, bool) or total_epochs < 1:
            raise ValueError(f"total_epochs must be an int >= 1 (the planned number of epochs), got {total_epochs!r}")
        groups = len(optimizer.param_groups)
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * groups
        if len(lambdas) != groups:
            raise ValueError(f"got {len(lambdas)} lr_lambdas for {groups} param groups; pass one, or one per group")
        if not all(callable(f) for f in lambdas):
            raise ValueError("lr_lambda must be a callable progress -> multiplier (or a list of them)")
        if steps_in_epoch is not None and not callable(steps_in_epoch):
            raise ValueError("steps_in_epoch must be a callable returning this epoch's optimizer steps, or None")
        self.lr_lambdas = lambdas
        self.total_epochs = total_epochs
        self._steps_fn = steps_in_epoch
        self.epochs_done = 0  # completed epochs
        self.step_in_epoch = 0  # optimizer steps taken in the current epoch
        self.epoch_steps: Optional[int] = None  # optimizer steps in the current epoch, once known
        super().__init__(optimizer, last_epoch)
        self._ready = True

    @property
    def progress(self) -> float:
        """Fraction of the planned training done, in ``[0, 1]``."""
        frac = self.step_in_epoch / self.epoch_steps if self.epoch_steps else 0.0
        return min(1.0, (self.epochs_done + frac) / self.total_epochs)

    def begin_epoch(self, num_steps: int, epoch: Optional[int] = None) -> None:
        """Announce that an epoch of ``num_steps`` optimizer steps starts (``epoch``: its 0-based index).

        Passing ``epoch`` keeps the schedule aligned even if an epoch ran fewer steps
        than announced (e.g. a loop broken early).
        """
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
            raise ValueError(f"num_steps must be an int >= 0 (this epoch's optimizer steps), got {num_steps!r}")
        if epoch is not None:
            self.epochs_done = int(epoch)
        elif self.step_in_epoch > 0:  # the previous epoch stopped short of its announced steps
            self.epochs_done += 1
        self.step_in_epoch = 0
        self.epoch_steps = num_steps if num_steps > 0 else None
        if num_steps == 0:  # nothing to train: the epoch is done already
            self.epochs_done += 1

    def _advance(self) -> None:
        if self.epoch_steps is None:
            if self._steps_fn is None:
                raise ValueError(
                    "EpochProgressLR needs each epoch's number of optimizer steps: call "
                    "sched.begin_epoch(steps_per_epoch(sampler, batch_size), epoch) at every epoch start, "
                    "or pass steps_in_epoch=callable"
                )
            n = int(self._steps_fn())
            if n < 1:
                raise ValueError(f"steps_in_epoch() returned {n} but a step is being taken; it must be >= 1")
            self.epoch_steps = n
        self.step_in_epoch += 1
        if self.step_in_epoch >= self.epoch_steps:
            self.epochs_done += 1
            self.step_in_epoch = 0
            self.epoch_steps = None

    def step(self, epoch: Optional[int] = None) -> None:  # type: ignore[override]
        if epoch is not None:
            raise ValueError("EpochProgressLR.step() takes no epoch; use begin_epoch(num_steps, epoch)")
        if getattr(self, "_ready", False):
            self._advance()
        super().step()

    def get_lr(self) -> List[float]:  # type: ignore[override]
        p = self.progress
        return [base * float(f(p)) for base, f in zip(self.base_lrs, self.lr_lambdas)]

    _PLAN = ("optimizer", "lr_lambdas", "_steps_fn", "total_epochs")

    def state_dict(self) -> Dict[str, Any]:
        """Progress state. Like ``LambdaLR``, the plan (callables, ``total_epochs``) comes from the constructor."""
        return {k: v for k, v in self.__dict__.items() if k not in self._PLAN}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self._PLAN})
