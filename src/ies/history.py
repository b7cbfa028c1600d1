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

        The ring turns by one column: the oldest column becomes the newest. When every sample
        got a loss (checked on CPU, where the check is cheap) that is one column write.
        Otherwise samples without a loss get their own history written back, shifted by one
        slot: a select per column done with integer ops on the float32 bits (exact for NaN
        and inf, no host sync, and on CPU ~10x cheaper than ``torch.where`` on floats).
        ``dense=True`` skips the CPU check.
        """
        ring, h, head = self.ring, self.ring.shape[0], self.head
        if dense is None:
            dense = ring.device.type != "cpu"
        if not dense and bool(got.all()):
            ring[head].copy_(values)
        else:  # new slot p = got ? slot p : old slot p - 1
            bits, m = ring.view(torch.int32), got.to(torch.int32).neg_()  # m: all ones where got
            oldest = bits[head].clone()
            _select(bits[head], values.contiguous().view(torch.int32), bits[(head - 1) % h], m)
            for p in range(head - 1, head - h + 1, -1):
                _select(bits[p % h], bits[p % h], bits[(p - 1) % h], m)
            _select(bits[(head + 1) % h], bits[(head + 1) % h], oldest, m)
        self.head = (head + 1) % h


def _select(out: Tensor, a: Tensor, b: Tensor, m: Tensor) -> None:
    """``out = m ? a : b`` bitwise (``m`` all ones or zero per entry); ``out`` may be ``a``, not ``b``."""
    t = torch.bitwise_xor(a, b)
    t &= m
    torch.bitwise_xor(t, b, out=out)
