"""Conventional early stopping on a held-out validation split, as a selection policy."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

from .base import SelectionPolicy, register_policy
from .random_remove import check_int

__all__ = ["EarlyStopping"]

NO_VAL_MESSAGE = (
    "method 'early-stop' needs a held-out validation split to watch, but this run has none; "
    "set --val-fraction (e.g. --val-fraction 0.1, or val_fraction=0.1 in RunConfig)"
)


@register_policy("early-stop")
class EarlyStopping(SelectionPolicy):
    """Conventional (whole-run) early stopping (Prechelt, 1998; the IES paper's Table 2 baseline).

    Every sample trains every epoch. After each epoch the validation accuracy is
    compared with the best so far; an improvement of more than ``min_delta``
    (percentage points) resets the counter, otherwise it grows, and after ``patience``
    epochs without improvement the whole run stops (``stop_training``).

    Saving: the epochs not run (``backprop_saved = 1 - epochs_run / planned_epochs``).
    The run's model is the last epoch's (weights are not rolled back); the engine's
    summary also reports the test accuracy at the validation-chosen epoch
    (``val_chosen_test_acc``), which is what restoring the best checkpoint would give.

    A run without a validation split cannot be early-stopped: the first ``end_epoch``
    raises ``ValueError`` telling the user to set ``--val-fraction`` (the policy cannot
    know earlier; the engine passes ``val_accuracy=None`` when there is no split).

    Args:
        patience: epochs without improvement before stopping (int >= 1, default 10).
        min_delta: smallest increase of validation accuracy, in points, that counts as
            an improvement (>= 0, default 0).
    """

    saving_note = "the whole run stops when validation accuracy stops improving; saving = epochs not run"

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 patience: int = 10, min_delta: float = 0.0) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.patience = check_int("patience", patience, low=1, hint=" (epochs without improvement, e.g. 10)")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
                math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a finite number >= 0 (accuracy points), got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.best: Optional[float] = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        if val_accuracy is None:
            raise ValueError(NO_VAL_MESSAGE)
        v = float(val_accuracy)
        if self.best is None or v > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = v, self.epoch, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.stop_training = True
        return {"best_val_acc": self.best, "best_val_epoch": self.best_epoch + 1, "bad_epochs": self.bad_epochs}

    def policy_state(self) -> Dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
