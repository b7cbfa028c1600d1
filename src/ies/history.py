"""The per-sample loss history as a ring of columns: appending an epoch costs one column write."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["RingHistory"]


class RingHistory:
    """``H`` losses per sample, oldest first, kept as ``H`` contiguous ``(N,)`` columns.

    Row ``(head + j) % H`` of the ``(H, N)`` ring holds each sample's ``j``-th oldest loss, so a
    new epoch overwrites the oldest column and turns the ring by one instead of shifting an
    ``(N, H)`` matrix; :meth:`columns` gives the views the rule's functions take.
    """

    def __init__(self, num_samples: int, length: int, device: torch.device) -> None:
        self.ring = torch.full((length, num_samples), float("nan"), dtype=torch.float32, device=device)
        self.head = 0

    def columns(self) -> List[Tensor]:
        """The history as H columns ``(N,)`` (views of the ring), oldest first."""
        h = self.ring.shape[0]
        return [self.ring[(self.head + j) % h] for j in range(h)]

    def as_tensor(self) -> Tensor:
        """``(N, H)``, oldest first (a copy: NaN where not yet recorded)."""
        return torch.stack(self.columns(), dim=1)

    def set(self, value: Tensor) -> None:
        """Replace the whole history with ``value`` ``(N, H)``, oldest first."""
        self.ring = value.t().to(device=self.ring.device, dtype=torch.float32).contiguous()
        self.head = 0

    def commit(self, values: Tensor, got: Tensor, dense: Optional[bool] = None) -> None:
        """Append ``values`` to the history of the samples in ``got``; the others keep theirs.

        The ring turns by one column: the oldest column becomes the newest. Samples without a
        loss this epoch get their own history written back, shifted by one slot (on CPU a
        sparse fix-up of the usually few such samples; elsewhere a dense ``where`` with no
        host sync).
        """
        ring, h, head = self.ring, self.ring.shape[0], self.head
        if dense is None:
            dense = ring.device.type != "cpu"
        if not dense:
            miss = torch.nonzero(~got).flatten()
            saved = ring.index_select(1, miss) if miss.numel() else None
            ring[head].copy_(values)
            if saved is not None:
                ring.index_copy_(1, miss, saved.roll(1, 0))
        else:  # new slot p = got ? slot p : old slot p - 1
            oldest = ring[head].clone()
            ring[head] = torch.where(got, values, ring[(head - 1) % h])
            for p in range(head - 1, head - h + 1, -1):
                ring[p % h] = torch.where(got, ring[p % h], ring[(p - 1) % h])
            ring[(head + 1) % h] = torch.where(got, ring[(head + 1) % h], oldest)
        self.head = (head + 1) % h
