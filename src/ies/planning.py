"""Who sits out next epoch: δ-mode's threshold or target mode's plan, the per-epoch cap, and
``keep_fraction``'s seeded draw. Pure functions over the tracker's tensors and books.

Example:
    >>> keep_at_random(torch.tensor([True, True, False, True]), 0.5, seed=0).sum().item()
    2
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .accounting import Accounting
from .config import IESConfig
from .criterion import exclusion_quota, history_length, select_most_stable

__all__ = ["choose_excluded", "keep_at_random", "loaded_kept"]


def choose_excluded(c: IESConfig, values: Tensor, books: Accounting, num_active: int, epoch: int) -> Tensor:
    """Bool ``(N,)``: who the rule would exclude after ``epoch``, before annealing and keep_fraction.

    δ-mode: criterion below ``threshold`` (with ``max_excluded_fraction``, the most stable of those,
    no more than the cap). Target mode: as many as keep the run's saving on course
    (:func:`~ies.criterion.exclusion_quota`, never more than the cap in one epoch), the lowest
    criterion first; with ``keep_fraction=p``, ``1/(1-p)`` times as many, since ``p`` of them train.
    """
    n, done = values.shape[0], epoch + 1
    if c.target_saving is None:
        mastered = values < c.threshold
        if c.exclusion_cap < 1.0:  # the most stable of the mastered, no more than the cap
            mastered = select_most_stable(values.masked_fill(~mastered, float("inf")), int(c.exclusion_cap * n + 1e-9))
        return mastered
    most = int(c.target_exclusion_limit * n + 1e-9)  # the most one epoch may exclude
    spent = {k: books.total[k] + books.epoch[k] for k in books.epoch}
    gain = 1.0  # what excluding one sample for an epoch saves
    cost = spent["backprop"]
    if c.target_measure == "compute":  # probing is charged: a probed excluded sample saves 1 - forward_cost
        cost += c.forward_cost * (spent["forward_only"] + spent["probed"])
        excluded = n - num_active
        rate = min(1.0, books.epoch["probed"] / excluded) if excluded else 1.0  # this epoch's probes per excluded
        gain = 1.0 - c.forward_cost * rate
    k = exclusion_quota(c.target_saving, n, c.total_epochs, done, n * done - cost, plan_epochs=c.anneal_start,
                        schedule=c.target_schedule, first=history_length(c.order, c.window, c.m), gain=gain, cap=most)
    if c.keep_fraction > 0:  # choose more, since keep_fraction of the chosen train anyway
        k = min(n, math.ceil(k / (1.0 - c.keep_fraction) - 1e-9))
    return select_most_stable(values, k, c.max_threshold)


def keep_at_random(chosen: Tensor, share: float, seed: int) -> Tensor:
    """Bool ``(N,)``: exactly ``round(share * chosen.sum())`` of ``chosen``, drawn from ``seed``.

    The draw is made on the CPU from a local generator, so every rank and every resume that
    passes the same seed (``config.seed + epoch``) keeps the same samples. One host sync (the count).
    """
    n_keep = int(round(share * int(chosen.sum())))
    draw = torch.rand(chosen.shape[0], generator=torch.Generator().manual_seed(int(seed))).to(chosen.device)
    return select_most_stable(draw.masked_fill(~chosen, float("inf")), n_keep)


def loaded_kept(kept: Any, num_samples: int) -> Tensor:
    """The saved ``kept`` mask, checked (all False when the state was saved without keep_fraction)."""
    if kept is None:
        return torch.zeros(num_samples, dtype=torch.bool)
    if not isinstance(kept, Tensor) or tuple(kept.shape) != (num_samples,) or kept.dtype != torch.bool:
        raise ValueError(f"IES state entry 'kept' must be a torch.bool tensor of shape ({num_samples},); "
                         "was it saved by IES.state_dict()?")
    return kept.clone()
