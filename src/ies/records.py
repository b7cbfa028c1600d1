"""The epoch's recorded losses: cheap to append to, checked and written once per epoch.

``record()`` is on the training hot path, once per batch. On CPU it only queues the batch's
``(indices, losses)``; :meth:`EpochRecords.flush` (run by the tracker before it reads the
epoch's records: the probe pass, ``step()``, a checkpoint) concatenates the queue, checks the
range and in-call duplicates of every queued call at once, and writes the losses and the
per-sample record counts with a handful of tensor ops. A bad call raises ``ValueError`` naming
the call and leaves every tensor unchanged (the queue since the last flush is discarded). Off
CPU the checks would cost a host sync per call, so each call writes at once and the checks are
accumulated on the device and reported at ``step()``.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor

__all__ = ["EpochRecords"]


class EpochRecords:
    """``pending`` losses ``(N,)`` and how often each sample was recorded this epoch, by kind."""

    def __init__(self, num_samples: int, device: torch.device) -> None:
        self.num_samples = num_samples
        self.device = device
        self.pending = torch.full((num_samples,), float("nan"), dtype=torch.float32, device=device)
        self.train = torch.zeros(num_samples, dtype=torch.int16, device=device)  # training records this epoch
        self.probe = torch.zeros(num_samples, dtype=torch.int16, device=device)  # probe records this epoch
        self._stamp = torch.zeros(num_samples, dtype=torch.int32, device=device)  # scratch: duplicate check
        self.bad = torch.zeros((), dtype=torch.bool, device=device)  # off-CPU: a bad index was seen
        self._queue: Dict[str, List[Tuple[Tensor, Tensor]]] = {"train": [], "probe": []}
        self._ones: Dict[int, Tensor] = {}

    def add(self, idx: Tensor, val: Tensor, kind: str) -> None:
        """Queue (CPU) or write (elsewhere) one call's int64 indices and float32 losses."""
        if self.device.type == "cpu":
            self._queue[kind].append((idx, val))
            return
        b = idx.shape[0]
        ar = torch.arange(b, dtype=torch.int32, device=self.device)
        lo, hi = torch.aminmax(idx)
        idx = idx.clamp(0, self.num_samples - 1)
        self._stamp.scatter_(0, idx, ar)
        self.bad |= (lo < 0) | (hi >= self.num_samples) | (self._stamp.index_select(0, idx) != ar).any()
        self.pending.scatter_(0, idx, val)
        getattr(self, kind).index_add_(0, idx, self._ones_of(b))

    def _ones_of(self, b: int) -> Tensor:
        ones = self._ones.get(b)
        if ones is None:
            ones = self._ones[b] = torch.ones(b, dtype=torch.int16, device=self.device)
        return ones

    def flush(self) -> None:
        """Check and write the queued calls (training first, then probes: a probe's loss wins)."""
        queued = [(kind, self._queue[kind]) for kind in ("train", "probe") if self._queue[kind]]
        if not queued:
            return
        self._queue = {"train": [], "probe": []}
        batches = [(kind, self._check(calls)) for kind, calls in queued]  # all checks before any write
        for kind, (idx, val) in batches:
            self.pending.scatter_(0, idx, val)  # a sample recorded twice: the later loss (CPU scatter is in order)
            # not cached: the epoch's total differs from epoch to epoch (the cache is for per-call batch sizes)
            getattr(self, kind).index_add_(0, idx, torch.ones(idx.shape[0], dtype=torch.int16, device=self.device))

    def _check(self, calls: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        idx = torch.cat([i for i, _ in calls]) if len(calls) > 1 else calls[0][0]
        val = torch.cat([v for _, v in calls]) if len(calls) > 1 else calls[0][1]
        sizes = torch.tensor([i.shape[0] for i, _ in calls])
        lo, hi = torch.aminmax(idx)
        if lo.item() < 0 or hi.item() >= self.num_samples:
            bad = int(torch.nonzero((idx < 0) | (idx >= self.num_samples))[0])
            raise ValueError(f"index out of range in record() call {self._call_of(bad, sizes)} of this epoch: got "
                             f"{int(idx[bad])} but the tracker was built for num_samples={self.num_samples}; pass "
                             f"dataset indices 0..{self.num_samples - 1}")
        pos = torch.arange(idx.shape[0], dtype=torch.int32)
        self._stamp.scatter_(0, idx, pos)  # the last position of each index wins (in order on CPU)
        winner = self._stamp.index_select(0, idx)
        dup = winner != pos
        if bool(dup.any()):
            call = torch.repeat_interleave(torch.arange(len(calls)), sizes)
            same = dup & (call.index_select(0, winner.long()) == call)
            if bool(same.any()):
                raise ValueError(f"duplicate index in record() call {self._call_of(int(torch.nonzero(same)[0]), sizes)} "
                                 "of this epoch: each sample may appear once per batch; record each sample's loss once "
                                 "(with gradient accumulation, once per micro-batch)")
        return idx, val

    @staticmethod
    def _call_of(position: int, sizes: Tensor) -> str:
        return f"#{int((sizes.cumsum(0) <= position).sum()) + 1}"

    def reset(self) -> None:
        """A new epoch: nothing recorded."""
        self._queue = {"train": [], "probe": []}
        self.pending.fill_(float("nan"))
        self.train.zero_()
        self.probe.zero_()
