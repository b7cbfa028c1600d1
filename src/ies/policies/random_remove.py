"""Random Remove: leave a fixed fraction of the training set out at random each epoch."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..config import _integer  # noqa: PLC2701  (the one integer check, shared with IESConfig)
from .base import SelectionPolicy, register_policy

__all__ = ["RandomRemove", "epoch_generator", "check_fraction", "check_int"]

_MASK64 = (1 << 63) - 1


def epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    """A local CPU generator seeded from ``seed + epoch``, mixed with a per-method ``salt``.

    The engine's data order uses a generator seeded ``seed + epoch`` itself; mixing in a
    salt keeps a method's random draw independent of that order (the same seed would
    otherwise correlate the two permutations). Global RNG state is never touched.
    """
    x = ((int(seed) + int(epoch)) * 0x9E3779B97F4A7C15 + int(salt) * 0xBF58476D1CE4E5B9) & _MASK64
    x ^= x >> 31
    return torch.Generator().manual_seed(x & _MASK64)


def check_fraction(name: str, value: Any, *, low: float, high: float, low_open: bool = False,
                   high_open: bool = False, hint: str = "") -> float:
    """``value`` as a float in the interval, else ``ValueError`` naming the parameter."""
    lo_s, hi_s = ("(" if low_open else "["), (")" if high_open else "]")
    msg = f"{name} must be a number in {lo_s}{low}, {high}{hi_s}{hint}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(msg)
    v = float(value)
    if math.isnan(v) or v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise ValueError(msg)
    return v


def check_int(name: str, value: Any, *, low: int, hint: str = "") -> int:
    """The rule's own integer check (:mod:`ies.config`), one definition for the policies too."""
    return _integer(name, value, low, hint)


@register_policy("random")
class RandomRemove(SelectionPolicy):
    """Random Remove (the IES paper's random baseline, Figure 5 / Table 2).

    Each epoch exactly ``round(fraction * N)`` samples, drawn uniformly without
    replacement, are left out of that epoch's forward and backward pass; the draw is
    seeded from ``seed + epoch`` with a local ``torch.Generator`` (mixed with a salt so it
    is independent of the engine's data order), so a run is reproducible and resumable.

    Args:
        fraction: share of the training set left out each epoch, in ``[0, 1)`` (the
            paper sweeps 10-50%; default 0.3).

    Saving: the left-out samples skip forward and backward; nothing is scored, so
    backprop saved = compute saved = ``fraction`` (up to rounding).
    """

    saving_note = "a random fraction of samples skips forward and backward each epoch (exact count, seeded)"
    _SALT = 0x52414E44  # "RAND"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 fraction: float = 0.3) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.fraction = check_fraction("fraction", fraction, low=0.0, high=1.0, high_open=True,
                                       hint=" (share of samples left out per epoch, e.g. 0.3)")
        self._mask: Optional[Tensor] = None
        self._mask_epoch = -1

    @property
    def num_removed(self) -> int:
        return int(round(self.fraction * self.num_samples))

    def train_mask(self) -> Tensor:
        if self._mask is None or self._mask_epoch != self.epoch:
            g = epoch_generator(self.seed, self.epoch, self._SALT)
            out = torch.randperm(self.num_samples, generator=g)[: self.num_removed]
            mask = torch.ones(self.num_samples, dtype=torch.bool)
            mask[out] = False
            self._mask, self._mask_epoch = mask, self.epoch
        return self._mask.clone()

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        return {"removed": self.num_removed}

    # The mask is a pure function of (seed, epoch): nothing else to save.
    def policy_state(self) -> Dict[str, Any]:
        return {"fraction": self.fraction}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        if float(state.get("fraction", self.fraction)) != self.fraction:
            raise ValueError(f"state was saved with fraction={state['fraction']}, this policy has {self.fraction}")
        self._mask, self._mask_epoch = None, -1
