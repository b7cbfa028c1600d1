"""Selective Backprop (Jiang et al., 2019): backpropagate the samples with the biggest losses."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .base import SelectionPolicy, register_policy
from .random_remove import check_int, epoch_generator

__all__ = ["SelectiveBackprop", "ComposerSelectiveBackprop", "LossHistory"]


class LossHistory:
    """A fixed-size FIFO of the last ``size`` losses and the empirical CDF over it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer = torch.zeros(size, dtype=torch.float32)
        self.count = 0  # how many slots are filled (<= size)
        self.pos = 0  # next slot to overwrite

    def push(self, losses: Tensor) -> None:
        x = losses.detach().float().cpu().flatten()
        if x.numel() >= self.size:  # only the newest `size` survive
            self.buffer.copy_(x[-self.size:])
            self.count, self.pos = self.size, 0
            return
        end = self.pos + x.numel()
        if end <= self.size:
            self.buffer[self.pos:end] = x
        else:
            k = self.size - self.pos
            self.buffer[self.pos:] = x[:k]
            self.buffer[: end - self.size] = x[k:]
        self.pos = end % self.size
        self.count = min(self.size, self.count + x.numel())

    def values(self) -> Tensor:
        return self.buffer[: self.count] if self.count < self.size else self.buffer

    def cdf(self, losses: Tensor) -> Tensor:
        """Share of the history at or below each loss, in ``[0, 1]`` (1 for the largest)."""
        h = torch.sort(self.values()).values
        if h.numel() == 0:
            return torch.ones_like(losses, dtype=torch.float32)
        pos = torch.searchsorted(h, losses.detach().float().cpu().contiguous(), right=True)
        return pos.float() / h.numel()

    def state_dict(self) -> Dict[str, Any]:
        return {"buffer": self.buffer.clone(), "count": self.count, "pos": self.pos}

    def load_state_dict(self, s: Dict[str, Any]) -> None:
        if s["buffer"].shape != (self.size,):
            raise ValueError(f"loss history of size {tuple(s['buffer'].shape)} does not match history_size={self.size}")
        self.buffer = s["buffer"].clone().float()
        self.count, self.pos = int(s["count"]), int(s["pos"])


@register_policy("selective-backprop")
class SelectiveBackprop(SelectionPolicy):
    """Selective Backprop (Jiang et al., "Accelerating Deep Learning by Focusing on the
    Biggest Losers", 2019).

    Every batch is forwarded (without gradient); each sample is then kept for the
    backward pass with probability ``CDF(loss) ** beta``, where CDF is the loss's
    percentile in a FIFO history of the last ``history_size`` losses (the batch's own
    losses are pushed first, as the reference code adds each loss to the history before
    ranking it). So the largest loss in the history is always kept, and on average a
    share ``1 / (beta + 1)`` is backpropagated (beta 1 -> 50%, 2 -> 33%, 3 -> 25%).

    Saving: only backward passes are saved. Every sample is still forwarded in the
    selection pass (counted as forward-only at ``forward_cost``), and the kept ones are
    forwarded again with gradient and backpropagated.

    This is the paper's rule, from its code (not Composer's variant, below). Deviations from
    that code: (1) it accumulates selected samples until a full batch is ready before the
    backward pass; here the engine backpropagates the kept part of each batch at once
    (smaller, variable-size batches, same samples). (2) Its percentile counts the history's
    losses *strictly smaller* than the loss; ours counts those *at or below* it (the sample
    itself included, its batch being pushed first), so our CDF is higher by one rank plus
    ties, ``(1 + ties) / history_size`` (about 0.1% with 1024). (3) It trains every sample
    in the first epoch and selects from the second; ours selects from the first batch.
    (4) The selection forward runs in eval mode (BatchNorm uses running statistics).

    Not Composer's Selective Backprop: Composer keeps a fixed share of each batch
    (``keep=0.5``), only between 50% and 90% of training (``start=0.5, end=0.9``) and only
    on every other batch (``interval=2``), so at its defaults it saves 0.4 x 0.5 x 0.5 = 10%
    of backprop, where this policy at the same keep share (``beta=1``, half kept on average)
    saves about 50%, from the first epoch to the last (measured: docs/methods.md). Compare
    savings, not settings; :class:`ComposerSelectiveBackprop` is Composer's rule.

    Args:
        beta: selectivity exponent (> 0; the paper uses 1-3, default 1).
        history_size: number of recent losses the percentile is taken over (default 1024).
        min_keep: floor on the keep probability, in [0, 1) (default 0, the paper's rule;
            SB's code calls it ``floor``). Useful to keep a batch from being empty.
    """

    saving_note = ("backward passes only: every sample is still forwarded (selection pass, counted as "
                   "forward-only), then the kept ones are forwarded again and backpropagated")
    needs_selection_pass = True
    _SALT = 0x53424B50  # "SBKP"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 beta: float = 1.0, history_size: int = 1024, min_keep: float = 0.0) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0 (the paper uses 1, 2 or 3), got {beta!r}")
        self.beta = float(beta)
        self.history_size = check_int("history_size", history_size, low=1, hint=" (recent losses kept, e.g. 1024)")
        if isinstance(min_keep, bool) or not isinstance(min_keep, (int, float)) or not 0.0 <= min_keep < 1.0:
            raise ValueError(f"min_keep must be a number in [0, 1), got {min_keep!r}")
        self.min_keep = float(min_keep)
        self.history = LossHistory(self.history_size)
        # One generator for the whole run (its state is saved), seeded from the run's seed mixed with a salt.
        self.generator = epoch_generator(self.seed, 0, self._SALT)

    def keep_probability(self, losses: Tensor) -> Tensor:
        """``max(min_keep, CDF(loss) ** beta)`` against the current history (no update)."""
        p = self.history.cdf(losses).pow(self.beta)
        return p.clamp(min=self.min_keep)

    def select(self, indices: Tensor, losses: Tensor) -> Tensor:
        finite = torch.isfinite(losses.detach().cpu())
        self.history.push(losses.detach().cpu()[finite])
        p = self.keep_probability(losses.detach().cpu())
        p[~finite] = 1.0  # a non-finite loss is never silently dropped
        keep = torch.rand(p.shape, generator=self.generator) < p
        return keep.to(indices.device)

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        c = self.books.epoch
        return {"selected_share": c["trained"] / max(c["forward_only"], 1)}

    def policy_state(self) -> Dict[str, Any]:
        return {"history": self.history.state_dict(), "generator": self.generator.get_state()}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        self.history.load_state_dict(state["history"])
        self.generator.set_state(state["generator"])


@register_policy("selective-backprop-composer")
class ComposerSelectiveBackprop(SelectionPolicy):
    """Composer's variant of Selective Backprop (MosaicML Composer, ``SelectiveBackprop``), for comparison.

    In the epochs with ``start <= epoch / total_epochs < end``, on every ``interval``-th batch
    (the first of each run of ``interval``), the ``keep`` share of the batch with the highest
    losses (``int(keep * B)``, at least 1) is backpropagated; every other batch trains in full.
    At Composer's defaults (``keep=0.5, start=0.5, end=0.9, interval=2``) that saves about
    ``(end - start) * (1 - keep) / interval`` = 10% of backprop, against about 50% for
    ``selective-backprop`` at ``beta=1``. Deviation: Composer measures ``start``/``end`` in
    batches of the whole run; here in epochs (the engine's unit of progress).

    Args:
        keep: share of a selected batch that is backpropagated, in (0, 1].
        start, end: the part of the run, as fractions of the planned epochs, where selection runs.
        interval: select on one batch in every ``interval`` (1: every batch).
    """

    saving_note = ("backward passes only, and only on the selected batches: those are forwarded twice (selection "
                   "pass counted as forward-only), the others train in full")
    needs_selection_pass = True

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 keep: float = 0.5, start: float = 0.5, end: float = 0.9, interval: int = 2) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        for name, v in (("keep", keep), ("start", start), ("end", end)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1] (Composer: keep=0.5, start=0.5, end=0.9), got {v!r}")
        if keep == 0.0:
            raise ValueError("keep must be > 0 (the share of a selected batch that is backpropagated), got 0")
        if not start < end:
            raise ValueError(f"start must be below end (the part of the run where selection runs), got {start} >= {end}")
        self.keep, self.start, self.end = float(keep), float(start), float(end)
        self.interval = check_int("interval", interval, low=1, hint=" (select on one batch in every interval)")
        self.batches = 0  # batches seen in the run, for the interval

    def selects_next_batch(self) -> bool:
        """The first batch of every ``interval``, inside ``[start, end)``; the others train without a selection pass."""
        first = self.batches % self.interval == 0
        self.batches += 1
        return first and self.start <= self.epoch / self.total_epochs < self.end

    def select(self, indices: Tensor, losses: Tensor) -> Tensor:
        n = losses.shape[0]
        k = max(1, int(self.keep * n))
        order = torch.nan_to_num(losses.detach().float(), nan=float("inf")).argsort(descending=True, stable=True)
        keep = torch.zeros(n, dtype=torch.bool, device=losses.device)
        keep[order[:k]] = True  # a non-finite loss sorts first: never silently dropped
        return keep.to(indices.device)

    def policy_state(self) -> Dict[str, Any]:
        return {"batches": self.batches}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        self.batches = int(state["batches"])
