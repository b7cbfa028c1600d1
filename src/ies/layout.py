"""The per-sample state's layout: the smallest dtype each tensor needs, and older layouts read back.

Losses stay float32 (the history ring and the epoch's pending losses): the rule's differences of
nearly equal losses need it. Everything else takes the smallest type that cannot overflow:

- ``count``: losses committed, saturating at ``H`` (only ``count >= H`` matters): uint8 for
  ``H <= 254`` (the default ``H`` is 6);
- the epoch's record flags: one uint8 (:mod:`ies.records`);
- ``times_excluded``, ``times_reincluded``, ``first_mastered``, ``probe_due`` hold epoch numbers:
  int16 while ``epoch + probe_max_interval + 2 <= 32767``; the tracker widens them to int32
  before the first step at which a value could pass int16 (:func:`widen_if_needed`), so they
  cannot wrap;
- the back-off interval as its number of doublings (uint8): ``min(probe_every * 2**k, cap)``.

With the defaults that is ``4 H + 4 + 1 + 1 + 1 + 4 * 2 + 1 = 40`` bytes per sample (61 before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Tuple

import torch
from torch import Tensor

from .config import IESConfig
from .criterion import history_length

if TYPE_CHECKING:  # pragma: no cover
    from .tracker import IES

__all__ = ["INT16_MAX", "EPOCH_TENSORS", "count_dtype", "epoch_dtype", "bytes_per_sample", "interval_of",
           "doublings_of", "next_backoff", "widen_if_needed", "saved_dtypes", "to_current"]

INT16_MAX = 32767
EPOCH_TENSORS = ("times_excluded", "times_reincluded", "first_mastered", "probe_due")


def count_dtype(h: int) -> torch.dtype:
    """Smallest dtype for a count saturating at ``h`` (``h + 1`` must fit before the clamp)."""
    return torch.uint8 if h <= 254 else torch.int16 if h < INT16_MAX else torch.int32


def epoch_dtype(epoch: int, cap: int) -> torch.dtype:
    """int16 while every epoch value a step can write (at most ``epoch + cap + 1``) fits, else int32."""
    return torch.int16 if epoch + cap + 2 <= INT16_MAX else torch.int32


def bytes_per_sample(config: IESConfig) -> int:
    """Bytes of per-sample state of a new tracker (history, pending, flags, excluded, counters)."""
    h = history_length(config.order, config.window, config.m)
    size = torch.empty(0, dtype=epoch_dtype(0, config.probe_max_interval)).element_size()
    return 4 * h + 4 + 1 + 1 + torch.empty(0, dtype=count_dtype(h)).element_size() + 4 * size + 1


def _levels(first: int, cap: int) -> int:
    """Doublings until the interval reaches ``cap``."""
    k = 0
    while first << k < cap:
        k += 1
    return k


def interval_of(doublings: Tensor, first: int, cap: int) -> Tensor:
    """Back-off intervals ``(N,)`` int32: ``min(first * 2**k, cap)``."""
    base = torch.full(doublings.shape, first, dtype=torch.int32, device=doublings.device)  # a fill, no host copy
    return base.bitwise_left_shift_(doublings.to(torch.int32)).clamp_(max=cap)


def doublings_of(interval: Tensor, first: int, cap: int) -> Tensor:
    """uint8 doublings of saved intervals: the first ``k`` whose interval is at least the saved one."""
    k = torch.zeros(interval.shape, dtype=torch.uint8, device=interval.device)
    for j in range(_levels(first, cap)):
        k += (interval > min(first << j, cap)).to(torch.uint8)
    return k


def next_backoff(k: Tensor, due: Tensor, grow: Tensor, newly: Tensor, epoch: int, first: int,
                 cap: int) -> Tuple[Tensor, Tensor]:
    """:func:`ies.probing.backoff_next` on this layout: ``(doublings, due)`` after ``epoch``.

    Where ``grow`` the interval doubles (up to ``cap``) and the sample is due that many epochs
    later; where ``newly`` it starts again at ``first`` and is due at the end of the next epoch.
    Integer arithmetic in ``due``'s dtype (``widen_if_needed`` keeps the values in range)."""
    g, nw = grow.to(due.dtype), newly.to(due.dtype)
    k = (k + grow.to(torch.uint8)).clamp_(max=_levels(first, cap)).mul_((~newly).to(torch.uint8))
    interval = interval_of(k, first, cap).to(due.dtype)
    due = due + g * (interval + epoch - due)
    return k, due.add_(nw * (epoch + 1 - due))


def widen_if_needed(tracker: "IES") -> None:
    """Move the epoch counters to int32 before a step could write a value past int16."""
    if tracker.times_excluded.dtype == torch.int16 and \
            epoch_dtype(tracker.epoch, tracker.config.probe_max_interval) != torch.int16:
        for k in EPOCH_TENSORS:
            setattr(tracker, k, getattr(tracker, k).to(torch.int32))


# saved tensors and the dtypes a state may hold them in, by state version (2: before issue 20)
_FIXED = {"history": (torch.float32,), "pending": (torch.float32,), "excluded": (torch.bool,),
          "probe_interval": (torch.int32,)}


def saved_dtypes(version: int, h: int) -> Dict[str, Tuple[torch.dtype, ...]]:
    """``{key: allowed dtypes}`` of the tensors in a state of ``version`` (2 or 3)."""
    if version == 2:
        rec, cnt, ep = (torch.int16,), (torch.int32,), (torch.int32,)
    else:
        rec, cnt, ep = (torch.uint8,), (count_dtype(h),), (torch.int16, torch.int32)
    return {**_FIXED, "count": cnt, "train_records": rec, "probe_records": rec, **{k: ep for k in EPOCH_TENSORS}}


def to_current(tensors: Dict[str, Tensor], h: int, epoch: int, cap: int) -> Dict[str, Tensor]:
    """Saved tensors (any allowed version) in the current layout: counts saturated, epoch values in
    int16 when the saved values and the next step fit, records as 0/1/2 uint8."""
    out = dict(tensors)
    out["count"] = tensors["count"].clamp(max=h).to(count_dtype(h))
    for k in ("train_records", "probe_records"):
        out[k] = tensors[k].clamp(max=2).to(torch.uint8)
    fits = all(tensors[k].numel() == 0 or int(tensors[k].max()) <= INT16_MAX for k in EPOCH_TENSORS)
    dt = epoch_dtype(epoch, cap) if fits else torch.int32
    for k in EPOCH_TENSORS:
        out[k] = tensors[k].to(dt)
    return out
