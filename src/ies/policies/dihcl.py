"""DIHCL: curriculum learning by dynamic instance hardness (Zhou, Wang & Bilmes, NeurIPS 2020)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from .base import SelectionPolicy, register_policy
from .random_remove import check_fraction, check_int, epoch_generator

__all__ = ["DIHCL"]

HARDNESS = ("loss", "loss-change")


@register_policy("dihcl")
class DIHCL(SelectionPolicy):
    """DIHCL-Rand, following Zhou, Wang & Bilmes, "Curriculum Learning by Dynamic Instance
    Hardness", NeurIPS 2020 (Algorithm 1 with random sampling).

    Dynamic instance hardness (DIH) of a sample is an exponential moving average of its
    instantaneous hardness ``a_t``: ``r <- gamma * a_t + (1 - gamma) * r`` for the samples
    trained this epoch; samples not selected keep their ``r``. ``a_t`` is one of the
    paper's variants:

    * ``"loss"`` (default): the sample's training loss this epoch;
    * ``"loss-change"``: ``|loss_t - loss_prev| / (epochs since it was last trained)``.

    Schedule: the first ``warm_epochs`` epochs train on all data (initialising ``r`` for
    every sample); afterwards epoch ``e`` trains ``floor(N * max(min_fraction,
    decay ** (e - warm_epochs + 1)))`` samples, drawn without replacement with probability
    proportional to ``r`` (zero hardness gets a 1e-6 floor so every sample stays reachable),
    from a generator seeded ``seed + epoch``.

    Deviations: the paper normalises the instantaneous hardness by the learning rate
    (summed over the epochs since the sample was last seen); the policy does not see the
    learning rate, so it uses the elapsed epoch count (identical for a constant learning
    rate up to a constant factor, which sampling proportional to ``r`` ignores). Only the
    "Rand" sampler is implemented (not the Greedy, UCB or Exp3 ones), and the prediction-flip
    hardness is not.

    Args:
        hardness: ``"loss"`` or ``"loss-change"``.
        gamma: EMA weight of the newest hardness, in ``(0, 1]`` (default 0.9).
        warm_epochs: epochs on the full data before selection starts (int >= 1, default 5).
        decay: multiplicative shrink of the subset fraction per epoch, in ``(0, 1]`` (default 0.9).
        min_fraction: smallest subset fraction, in ``(0, 1]`` (default 0.5).

    Saving: unselected samples skip forward and backward; nothing is scored.
    """

    saving_note = "samples not drawn by the hardness-proportional curriculum skip forward and backward"
    _SALT = 0x4449484C  # "DIHL"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 hardness: str = "loss", gamma: float = 0.9, warm_epochs: int = 5, decay: float = 0.9,
                 min_fraction: float = 0.5) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        if hardness not in HARDNESS:
            raise ValueError(f"hardness must be one of {', '.join(HARDNESS)}, got {hardness!r}")
        self.hardness = hardness
        self.gamma = check_fraction("gamma", gamma, low=0.0, high=1.0, low_open=True, hint=" (EMA weight of the newest hardness)")
        self.warm_epochs = check_int("warm_epochs", warm_epochs, low=1, hint=" (full-data epochs before the curriculum)")
        self.decay = check_fraction("decay", decay, low=0.0, high=1.0, low_open=True, hint=" (per-epoch shrink of the subset)")
        self.min_fraction = check_fraction("min_fraction", min_fraction, low=0.0, high=1.0, low_open=True,
                                           hint=" (smallest share of samples trained per epoch)")
        n = num_samples
        self.dih = torch.zeros(n, dtype=torch.float32)
        self.last_loss = torch.zeros(n, dtype=torch.float32)
        self.last_epoch = torch.full((n,), -1, dtype=torch.int64)  # epoch a sample was last trained
        self._mask: Optional[Tensor] = None
        self._mask_epoch = -1

    def subset_fraction(self, epoch: Optional[int] = None) -> float:
        """Share of the training set drawn in ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        if e < self.warm_epochs:
            return 1.0
        return max(self.min_fraction, self.decay ** (e - self.warm_epochs + 1))

    def subset_size(self, epoch: Optional[int] = None) -> int:
        f = self.subset_fraction(epoch)
        return self.num_samples if f >= 1.0 else max(1, int(math.floor(f * self.num_samples)))

    def sampling_probability(self) -> Tensor:
        p = self.dih.clone()
        p[~torch.isfinite(p)] = float(p[torch.isfinite(p)].max()) if bool(torch.isfinite(p).any()) else 1.0
        p[p <= 0] = 1e-6
        return p / p.sum()

    def train_mask(self) -> Tensor:
        if self._mask is None or self._mask_epoch != self.epoch:
            k = self.subset_size()
            mask = torch.ones(self.num_samples, dtype=torch.bool)
            if k < self.num_samples:
                g = epoch_generator(self.seed, self.epoch, self._SALT)
                chosen = torch.multinomial(self.sampling_probability(), k, replacement=False, generator=g)
                mask = torch.zeros(self.num_samples, dtype=torch.bool)
                mask[chosen] = True
            self._mask, self._mask_epoch = mask, self.epoch
        return self._mask.clone()

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        i, loss = indices.cpu(), losses.cpu()
        if self.hardness == "loss":
            a = loss
        else:
            prev = self.last_epoch[i]
            elapsed = (self.epoch - prev).clamp(min=1).float()
            a = torch.where(prev >= 0, (loss - self.last_loss[i]).abs() / elapsed, loss)  # first visit: the loss itself
        self.dih[i] = self.gamma * a + (1.0 - self.gamma) * self.dih[i]
        self.last_loss[i] = loss
        self.last_epoch[i] = self.epoch

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        size = int(self.train_mask().sum())
        self._mask, self._mask_epoch = None, -1
        return {"subset_size": size}

    def policy_state(self) -> Dict[str, Any]:
        return {"dih": self.dih.clone(), "last_loss": self.last_loss.clone(), "last_epoch": self.last_epoch.clone()}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        for k in ("dih", "last_loss", "last_epoch"):
            if state[k].shape != (self.num_samples,):
                raise ValueError(f"dihcl state {k!r} does not match the number of samples")
        self.dih = state["dih"].clone().float()
        self.last_loss = state["last_loss"].clone().float()
        self.last_epoch = state["last_epoch"].clone().long()
        self._mask, self._mask_epoch = None, -1
