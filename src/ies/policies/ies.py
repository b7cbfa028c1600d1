"""IES and the no-removal baseline as selection policies."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor

from ..config import IESConfig, field_names
from ..tracker import IES
from .base import SelectionPolicy, register_policy

__all__ = ["IESPolicy", "NoRemoval"]

_RUN_LEVEL = ("total_epochs", "forward_cost", "seed")  # given to every policy by the engine, not per method


@register_policy("ies")
class IESPolicy(SelectionPolicy):
    """Instance-dependent Early Stopping (Yuan et al., ICLR 2025) around one :class:`~ies.IES` tracker.

    Its parameters are :class:`~ies.IESConfig`'s fields (``threshold``, ``order``, ...,
    ``target_saving``, ``probe_every``, ``probe_backoff``): declared there once. The policy's
    books are the tracker's, so the engine's statistics are the tracker's own counts.
    """

    saving_note = "excluded samples skip forward and backward; a forward-only probe pass measures them (counted)"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 **params: Any) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        config = IESConfig.from_dict({**params, "total_epochs": total_epochs, "forward_cost": forward_cost, "seed": seed})
        self.tracker = IES(num_samples, config)
        self.books = self.tracker.books

    @classmethod
    def params(cls) -> Dict[str, Any]:
        return {k: v for k, v in field_names().items() if k not in _RUN_LEVEL}

    def train_mask(self) -> Tensor:
        return self.tracker.active_mask

    def indices_to_probe(self) -> Tensor:
        return self.tracker.indices_to_probe()

    def record(self, indices: Tensor, losses: Tensor, *, backpropagated: Optional[int] = None, forward_only: int = 0) -> None:
        self.tracker.record(indices, losses, backpropagated=backpropagated)
        self.books.add("forward_only", int(forward_only))

    def record_probe(self, indices: Tensor, losses: Tensor, *, seconds: float = 0.0) -> None:
        self.tracker.record_probe(indices, losses, seconds=seconds)

    def close_epoch(self, val_accuracy: Optional[float] = None) -> Dict[str, Any]:
        forward_only = self.books.epoch["forward_only"]  # step() closes the books
        s = self.tracker.step()
        stats = {
            "epoch": self.epoch, "excluded": s.excluded, "backpropagated": s.trained,
            "backprop_equivalent": s.backpropagated, "forward_only": forward_only,
            "probed": s.probed, "backprop_saved": s.backprop_saved, "compute_saved": s.compute_saved,
            "mastered": s.mastered, "newly_excluded": s.newly_excluded, "reincluded": s.reincluded,
            "next_active": s.next_active, "unrecorded": s.unrecorded, "nonfinite": s.nonfinite,
        }
        self.epoch += 1
        return stats

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

    @classmethod
    def params(cls) -> Dict[str, Any]:
        return {"order": 2, "window": 3, "m": 1}
