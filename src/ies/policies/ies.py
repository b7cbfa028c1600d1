"""IES and the no-removal baseline as selection policies."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..tracker import InstanceEarlyStopping
from .base import SelectionPolicy, register_policy

__all__ = ["IESPolicy", "NoRemoval"]


@register_policy("ies")
class IESPolicy(SelectionPolicy):
    """Instance-dependent Early Stopping (Yuan et al., ICLR 2025).

    Follows the paper's code: order-k difference of per-sample losses, moving average of
    its absolute value over ``window`` epochs, mastered below ``threshold``; mastered
    samples skip the next epoch's training and are scored by a forward-only pass.
    ``order`` 0-3 gives the paper's Figure 5 variants.
    """

    saving_note = "mastered samples skip forward and backward; their loss is measured by a forward-only pass (counted)"

    def __init__(
        self,
        num_samples: int,
        *,
        total_epochs: int,
        seed: int = 0,
        forward_cost: float = 1.0 / 3.0,
        threshold: float = 1e-3,
        order: int = 2,
        window: int = 3,
        m: int = 1,
        score_every: int = 1,
        anneal_fraction: float = 0.0,
        score_all: bool = False,
    ) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.tracker = InstanceEarlyStopping(
            num_samples, threshold, order, window, m, score_every=score_every, anneal_fraction=anneal_fraction,
            total_epochs=total_epochs, score_all=score_all, forward_cost=forward_cost,
        )
        self.last_stats: Optional[Dict[str, Any]] = None

    def train_mask(self) -> Tensor:
        return self.tracker.active_mask

    def indices_to_score(self) -> Tensor:
        return self.tracker.indices_to_score()

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        self.tracker.record(indices, losses)

    def observe_scores(self, indices: Tensor, losses: Tensor) -> None:
        self.tracker.record_scores(indices, losses)

    def end_epoch(self, val_accuracy: Optional[float] = None, *, excluded: Optional[int] = None) -> Dict[str, Any]:
        excluded_now = self.num_samples - self.tracker.num_active
        return super().end_epoch(val_accuracy, excluded=excluded_now)

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        s = self.tracker.step()
        return {"mastered": s.mastered, "newly_excluded": s.newly_excluded, "reincluded": s.reincluded,
                "next_active": s.next_active, "nonfinite": s.nonfinite}

    def policy_state(self) -> Dict[str, Any]:
        return {"tracker": self.tracker.state_dict()}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])


@register_policy("none")
class NoRemoval(IESPolicy):
    """The baseline: every sample trains every epoch (IES with threshold 0, identical otherwise).

    Per-sample losses are still tracked, so the criterion can be analysed without acting on it.
    """

    saving_note = "no removal (reference)"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 order: int = 2, window: int = 3, m: int = 1) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost,
                         threshold=0.0, order=order, window=window, m=m)
