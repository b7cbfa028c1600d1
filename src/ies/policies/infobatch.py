"""Small-Loss & Rescale: the InfoBatch rule (Qin et al., ICLR 2024)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .base import SelectionPolicy, register_policy
from .random_remove import check_fraction, epoch_generator

__all__ = ["InfoBatch"]


@register_policy("infobatch")
class InfoBatch(SelectionPolicy):
    """Small-Loss & Rescale, following InfoBatch (Qin et al., "InfoBatch: Lossless Training
    Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024, and its reference code).

    Each epoch, among the samples whose last recorded loss is below the mean of the
    recorded losses ("well-learned"), a random share ``prune_ratio`` is left out of that
    epoch's forward and backward pass; the well-learned samples that are kept get their
    loss multiplied by ``1 / (1 - prune_ratio)`` so the expected gradient is unchanged.
    With annealing (``delta < 1``) nothing is pruned and nothing rescaled from epoch
    ``delta * total_epochs`` on (InfoBatch's ``delta = 0.875``: full data for the last 12.5%).

    As in InfoBatch, a pruned sample is not rescored: it keeps its old loss until it is
    trained again. Samples never trained yet count as high-loss (always kept) and are
    left out of the mean; on the first epoch everything is trained.

    Deviation: InfoBatch keeps each well-learned sample independently with probability
    ``1 - prune_ratio``; here exactly ``round(prune_ratio * n_well_learned)`` of them are
    left out (a seeded draw from ``seed + epoch``), so the saving is deterministic. The
    expected pruned count and the rescaling are the same.

    Args:
        prune_ratio: share of the below-mean samples left out each epoch, in ``[0, 1)``
            (InfoBatch default 0.5; the IES paper sweeps it over 10-50%).
        delta: annealing point as a fraction of the run, in ``(0, 1]``; 1 disables annealing.
    """

    saving_note = ("a random share of below-mean-loss samples skips forward and backward; kept ones are "
                   "up-weighted 1/(1-r); pruned samples are not rescored (as in InfoBatch)")
    _SALT = 0x494E464F  # "INFO"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 prune_ratio: float = 0.5, delta: float = 0.875) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.prune_ratio = check_fraction("prune_ratio", prune_ratio, low=0.0, high=1.0, high_open=True,
                                          hint=" (share of below-mean samples pruned; InfoBatch uses 0.5)")
        self.delta = check_fraction("delta", delta, low=0.0, high=1.0, low_open=True,
                                    hint=" (annealing point; InfoBatch uses 0.875, 1 disables annealing)")
        self.scores = torch.zeros(num_samples, dtype=torch.float32)
        self.seen = torch.zeros(num_samples, dtype=torch.bool)
        self._mask: Optional[Tensor] = None
        self._weights: Optional[Tensor] = None
        self._mask_epoch = -1

    def pruning(self, epoch: Optional[int] = None) -> bool:
        """Whether ``epoch`` (default: the current one) prunes (before the annealing point)."""
        e = self.epoch if epoch is None else epoch
        return e < self.delta * self.total_epochs

    def well_learned(self) -> Tensor:
        """Bool ``(N,)``: seen samples whose last loss is below the mean of the seen samples' (finite) losses."""
        valid = self.seen & torch.isfinite(self.scores)  # a non-finite loss is never "well learned"
        if not bool(valid.any()):
            return torch.zeros(self.num_samples, dtype=torch.bool)
        mean = self.scores[valid].mean()
        return valid & (self.scores < mean)

    def _plan(self) -> None:
        if self._mask is not None and self._mask_epoch == self.epoch:
            return
        n = self.num_samples
        mask = torch.ones(n, dtype=torch.bool)
        weights = torch.ones(n, dtype=torch.float32)
        if self.pruning() and self.prune_ratio > 0:
            low = torch.nonzero(self.well_learned()).flatten()
            k = int(round(self.prune_ratio * low.numel()))
            g = epoch_generator(self.seed, self.epoch, self._SALT)
            pruned = low[torch.randperm(low.numel(), generator=g)[:k]]
            mask[pruned] = False
            weights[low] = 1.0 / (1.0 - self.prune_ratio)
            weights[pruned] = 1.0
        self._mask, self._weights, self._mask_epoch = mask, weights, self.epoch

    def train_mask(self) -> Tensor:
        self._plan()
        return self._mask.clone()

    def batch_weights(self, indices: Tensor) -> Optional[Tensor]:
        self._plan()
        return self._weights[indices.cpu()]

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        i = indices.cpu()
        self.scores[i] = losses.cpu()
        self.seen[i] = True

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        self._plan()
        pruned = int((~self._mask).sum())
        self._mask, self._weights, self._mask_epoch = None, None, -1  # the next epoch replans from new losses
        return {"pruned": pruned, "annealing": not self.pruning()}

    def policy_state(self) -> Dict[str, Any]:
        return {"scores": self.scores.clone(), "seen": self.seen.clone()}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        scores, seen = state["scores"], state["seen"]
        if scores.shape != (self.num_samples,) or seen.shape != (self.num_samples,):
            raise ValueError("infobatch state does not match the number of samples")
        self.scores = scores.clone().float()
        self.seen = seen.clone().bool()
        self._mask, self._weights, self._mask_epoch = None, None, -1
