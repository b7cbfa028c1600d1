"""Small-Loss & Rescale: the InfoBatch rule (Qin et al., ICLR 2024)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .base import SelectionPolicy, register_policy
from .random_remove import check_fraction, epoch_generator

__all__ = ["InfoBatch", "MAX_PRUNE_RATIO", "keep_ratio", "num_kept", "well_learned_mask"]

#: The largest prune ratio accepted. The reference code clamps its keep ratio at 0.1
#: (``keep_ratio = min(1.0, max(1e-1, 1.0 - prune_ratio))``) because the kept below-mean
#: samples are up-weighted by ``1 / keep_ratio``: x10 at 0.9, x20 at 0.95, x100 at 0.99.
MAX_PRUNE_RATIO = 0.9
# The reference's literal ``1e-1``; not ``1.0 - MAX_PRUNE_RATIO``, which is 0.09999999999999998.
_MIN_KEEP_RATIO = 0.1


def keep_ratio(prune_ratio: float) -> float:
    """The share of the below-mean samples kept, computed as the reference code does.

    ``min(1.0, max(0.1, 1.0 - prune_ratio))`` in Python floats, verbatim: at
    ``prune_ratio=0.9`` ``1.0 - 0.9`` is ``0.09999999999999998`` and the clamp makes it
    exactly ``0.1``, which changes the kept count (``int(0.1 * 10) = 1`` but
    ``int(0.09999999999999998 * 10) = 0``).

    Example:
        >>> keep_ratio(0.5), keep_ratio(0.9)
        (0.5, 0.1)
    """
    return min(1.0, max(_MIN_KEEP_RATIO, 1.0 - float(prune_ratio)))


def num_kept(n_well_learned: int, prune_ratio: float) -> int:
    """How many of ``n_well_learned`` below-mean samples are kept: ``int(keep_ratio * n)``.

    This truncates the float product exactly as the reference code
    (``np.random.choice(well_learned, int(self.keep_ratio * len(well_learned)))``) does,
    rounding error included, so the pruned count ``n - num_kept`` is ``ceil(r * n)`` up to
    that error: at ``r=0.8, n=10`` the product is ``0.19999999999999996 * 10 =
    1.9999999999999996``, so 1 is kept and 9 pruned (exact arithmetic would prune 8).

    Example:
        >>> num_kept(7, 0.5), num_kept(10, 0.8), num_kept(10, 0.9)
        (3, 1, 1)
    """
    return int(keep_ratio(prune_ratio) * int(n_well_learned))


def well_learned_mask(scores: Tensor, seen: Tensor) -> Tensor:
    """Bool ``(N,)``: seen samples whose finite last loss is below the mean of those losses.

    ``scores``: float ``(N,)``, each sample's last recorded loss; ``seen``: bool ``(N,)``.
    Unseen samples and non-finite losses are left out of the mean and are never well learned.

    Example:
        >>> well_learned_mask(torch.tensor([0.1, 0.9, 0.2, 5.0]), torch.tensor([True, True, True, False]))
        tensor([ True, False,  True, False])
    """
    valid = seen & torch.isfinite(scores)
    if not bool(valid.any()):
        return torch.zeros_like(seen, dtype=torch.bool)
    return valid & (scores < scores[valid].mean())


@register_policy("infobatch")
class InfoBatch(SelectionPolicy):
    """Small-Loss & Rescale, following InfoBatch (Qin et al., "InfoBatch: Lossless Training
    Speed Up by Unbiased Dynamic Data Pruning", ICLR 2024, and its reference code,
    ``NUS-HPC-AI-Lab/InfoBatch``, ``infobatch/infobatch.py``).

    Each epoch, among the samples whose last recorded loss is below the mean of the
    recorded losses ("well-learned"), exactly ``int(keep_ratio * n)`` (see :func:`num_kept`)
    are kept, drawn uniformly without replacement, and the other ``n - int(keep_ratio * n)``
    (``ceil(prune_ratio * n)`` up to float rounding) are left out of that epoch's forward and
    backward pass; the kept well-learned samples get their loss multiplied by
    ``1 / keep_ratio`` so the expected gradient is unchanged. The counts and weights are
    the reference code's, float arithmetic included. With annealing (``delta < 1``) only the
    first ``floor(delta * total_epochs)`` epochs prune, as in the reference code; after that
    every sample trains with weight 1 (InfoBatch's ``delta = 0.875``).

    As in InfoBatch, a pruned sample is not rescored: it keeps its old loss until it is
    trained again, and nothing prunes in the first epoch.

    Differences from the reference code (each on purpose; see docs/methods.md):

    * Samples never trained yet are always kept and left out of the mean; the reference
      gives them a loss of 3.0 that counts in the mean. 3.0 is on no particular loss scale
      (cross-entropy starts near ln C: 2.3 for 10 classes, 4.6 for 100).
    * Non-finite losses are left out of the mean and never pruned; in the reference one inf
      makes every other sample "below the mean", and one NaN (or -inf) stops all pruning
      until that sample trains again.
    * ``prune_ratio`` above 0.9 is refused; the reference silently clamps it to 0.9.
    * The draw comes from a local generator seeded from ``seed + epoch``; the reference
      reseeds numpy's global generator with the epoch count, whatever the run's seed.
    * During annealing every weight is 1; the reference resets its weights only when
      ``delta * total_epochs`` is an integer, and otherwise keeps the last pruned epoch's
      ``1 / keep_ratio`` weights for the rest of the run.

    Args:
        prune_ratio: share of the below-mean samples left out each epoch, in ``[0, 0.9]``
            (InfoBatch default 0.5; the IES paper sweeps it over 10-50%). The cap is the
            reference code's: the kept ones are up-weighted ``1 / (1 - prune_ratio)``, x10 at 0.9.
        delta: annealing point as a fraction of the run, in ``(0, 1]``; 1 disables annealing.

    Example:
        >>> p = InfoBatch(4, total_epochs=8, prune_ratio=0.5, delta=1.0)
        >>> p.record(torch.arange(4), torch.tensor([0.1, 0.2, 0.9, 1.0])); _ = p.close_epoch()
        >>> int((~p.train_mask()).sum())  # 2 below the mean 0.55: keep int(0.5 * 2) = 1, prune 1
        1
    """

    saving_note = ("a random share of below-mean-loss samples skips forward and backward; kept ones are "
                   "up-weighted 1/(1-r); pruned samples are not rescored (as in InfoBatch)")
    _SALT = 0x494E464F  # "INFO"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 prune_ratio: float = 0.5, delta: float = 0.875) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.prune_ratio = check_fraction(
            "prune_ratio", prune_ratio, low=0.0, high=MAX_PRUNE_RATIO,
            hint=(" (share of below-mean samples pruned each epoch; InfoBatch uses 0.5 and caps it at 0.9, "
                  "as here, because the kept ones are up-weighted by 1/(1 - prune_ratio): x10 at 0.9, "
                  "x100 at 0.99)"))
        self.delta = check_fraction("delta", delta, low=0.0, high=1.0, low_open=True,
                                    hint=" (annealing point; InfoBatch uses 0.875, 1 disables annealing)")
        self.scores = torch.zeros(num_samples, dtype=torch.float32)  # (N,) last recorded loss
        self.seen = torch.zeros(num_samples, dtype=torch.bool)  # (N,) trained at least once
        self._mask: Optional[Tensor] = None
        self._weights: Optional[Tensor] = None
        self._mask_epoch = -1

    @property
    def num_pruning_epochs(self) -> int:
        """How many epochs prune, from the first: ``floor(delta * total_epochs)``."""
        return math.floor(self.total_epochs * self.delta)

    def pruning(self, epoch: Optional[int] = None) -> bool:
        """Whether ``epoch`` (default: the current one, counted from 0) prunes.

        The reference sampler counts epochs from 1 (its constructor already runs one
        reset) and prunes while that count is ``<= num_epochs * delta``; ``epoch + 1 <=
        total_epochs * delta`` is the same test on the same float product.
        """
        e = self.epoch if epoch is None else epoch
        return e + 1 <= self.total_epochs * self.delta

    def well_learned(self) -> Tensor:
        """Bool ``(N,)``: seen samples whose last loss is below the mean of the seen samples' (finite) losses."""
        return well_learned_mask(self.scores, self.seen)

    def _plan(self) -> None:
        if self._mask is not None and self._mask_epoch == self.epoch:
            return
        n = self.num_samples
        mask = torch.ones(n, dtype=torch.bool)
        weights = torch.ones(n, dtype=torch.float32)
        if self.pruning() and self.prune_ratio > 0:
            low = torch.nonzero(self.well_learned()).flatten()
            keep = keep_ratio(self.prune_ratio)
            k = low.numel() - num_kept(low.numel(), self.prune_ratio)
            g = epoch_generator(self.seed, self.epoch, self._SALT)
            pruned = low[torch.randperm(low.numel(), generator=g)[:k]]
            mask[pruned] = False
            weights[low] = 1.0 / keep  # the reference's weight, 1 / keep_ratio, stored as float32 too
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
        annealing = not self.pruning()
        self._mask, self._weights, self._mask_epoch = None, None, -1  # the next epoch replans from new losses
        return {"pruned": pruned, "annealing": annealing}

    def policy_state(self) -> Dict[str, Any]:
        return {"scores": self.scores.clone(), "seen": self.seen.clone()}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        scores, seen = state["scores"], state["seen"]
        if scores.shape != (self.num_samples,) or seen.shape != (self.num_samples,):
            raise ValueError(f"infobatch state has scores {tuple(scores.shape)} and seen {tuple(seen.shape)}, "
                             f"this run has {self.num_samples} samples; resume with the same training set")
        self.scores = scores.clone().float()
        self.seen = seen.clone().bool()
        self._mask, self._weights, self._mask_epoch = None, None, -1
