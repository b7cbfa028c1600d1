"""Samplers that yield only the samples IES keeps in training.

``ActiveSampler`` mirrors :class:`torch.utils.data.DistributedSampler`: a local
generator seeded with ``seed + epoch`` permutes all ``N`` indices, excluded ones are
filtered out (so the survivors keep the order they would have had without removal),
and with ``num_replicas > 1`` the active list is padded or cut so every rank yields
the same count, then sharded. ``__iter__`` has no side effects: calling ``iter()``
twice gives the same order, and the epoch only moves when the tracker steps or
``set_epoch`` is called.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from torch.utils.data import Sampler

from .ieswarning import IESWarning

if TYPE_CHECKING:  # pragma: no cover  (a hint only: the tracker imports this module)
    from .tracker import IES

__all__ = ["ActiveSampler", "active_order"]


def active_order(active: torch.Tensor, *, epoch: int, seed: int = 0, shuffle: bool = True) -> torch.Tensor:
    """This epoch's order of the active indices: ``(N,) bool -> (A,) int64`` on CPU."""
    active = active.detach().cpu()
    n = active.shape[0]
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        perm = torch.randperm(n, generator=g)
        return perm[active[perm]]
    return torch.nonzero(active).flatten()


class ActiveSampler(Sampler[int]):
    """Yield this epoch's active indices, each exactly once (per rank when distributed).

    Args:
        tracker: the :class:`~ies.IES` (or any object with ``active_mask``,
            ``num_active`` and ``epoch``) whose active set is sampled.
        shuffle: permute with a generator seeded ``seed + epoch``.
        seed: base seed; all ranks must pass the same.
        num_replicas, rank: as in ``DistributedSampler``; default to the process group if
            one is initialized, else a single process.
        drop_last: with several replicas, drop the tail so the count divides evenly
            instead of padding with repeated indices.

    The epoch is the tracker's (``tracker.epoch``) unless :meth:`set_epoch` was called.
    """

    def __init__(
        self,
        tracker: IES,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None or rank is None:
            dist = torch.distributed
            on = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if on else 1)
            rank = rank if rank is not None else (dist.get_rank() if on else 0)
        for name, v in (("shuffle", shuffle), ("drop_last", drop_last)):
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be True or False, got {v!r}")
        for name, v in (("seed", seed), ("num_replicas", num_replicas), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got num_replicas={num_replicas}, rank={rank}")
        self.tracker = tracker
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self._epoch: Optional[int] = None
        self._last_pass: Optional[tuple] = None  # (epoch, training records) when the last pass started

    @property
    def epoch(self) -> int:
        return self.tracker.epoch if self._epoch is None else self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch used for shuffling (otherwise the tracker's epoch is used)."""
        self._epoch = int(epoch)

    def _per_rank(self, active: int) -> int:
        if self.num_replicas == 1:
            return active
        if self.drop_last:
            return active // self.num_replicas
        return math.ceil(active / self.num_replicas)

    def __len__(self) -> int:
        return self._per_rank(int(self.tracker.num_active))

    def _check_epoch_protocol(self) -> None:
        """Warn when a new pass starts after samples were trained in this same epoch."""
        trained = getattr(self.tracker, "trained_in_epoch", None)  # duck-typed trackers may not count
        if trained is None or self._epoch is not None:
            return
        now = (self.tracker.epoch, trained)
        if self._last_pass is not None and now[0] == self._last_pass[0] and now[1] > self._last_pass[1]:
            warnings.warn(
                f"a new pass over the IES sampler started in epoch {now[0]} after {int(now[1])} samples were trained, "
                "but end_epoch() was not called since the last pass: call tracker.end_epoch(...) once after every "
                "pass, or the losses are overwritten and nothing is ever excluded", IESWarning, stacklevel=3)
        self._last_pass = now

    def __iter__(self) -> Iterator[int]:
        self._check_epoch_protocol()
        order = active_order(self.tracker.active_mask, epoch=self.epoch, seed=self.seed, shuffle=self.shuffle)
        if self.num_replicas > 1:
            per = self._per_rank(order.numel())
            total = per * self.num_replicas
            if total > order.numel():  # pad by repeating from the start, as DistributedSampler does
                reps = math.ceil((total - order.numel()) / max(order.numel(), 1))
                order = torch.cat([order] + [order] * reps)[:total] if order.numel() else order
            order = order[:total][self.rank :: self.num_replicas]
        return iter(order.tolist())
