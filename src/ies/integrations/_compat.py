"""The one place where IES uses private ``transformers.Trainer`` methods, and why.

IES changes the number of batches in every epoch. ``transformers.Trainer`` (5.3 and later)
plans the epoch once: ``steps_in_epoch`` and ``num_update_steps_per_epoch`` are computed
before the first epoch and passed unchanged to ``Trainer._run_epoch``, which uses them to
decide when the last gradient-accumulation cycle of an epoch steps; and on resume
``Trainer._init_training_state`` derives the epoch from ``global_step //
num_update_steps_per_epoch``, which is wrong once epochs have different lengths. No public
hook (``get_train_dataloader``, callbacks, ``compute_loss``, ``create_scheduler``) can
change either, so :class:`TrainerEpochHooks` overrides these two methods, and nothing else
private. :func:`check_trainer` runs when the integration is imported: it checks the
installed version and the two methods' parameters, and fails with the versions to install.

The hooks exist from transformers 5.3; the declared and tested range starts at 5.18.0 (before
it, resuming a CPU multi-process run fails inside the Trainer's optimizer load) and the
newest tested is 5.24.0 (``tests/integrations/``, see docs/integrations.md).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Optional, Tuple

__all__ = ["MIN_TRANSFORMERS", "TESTED_TRANSFORMERS", "check_trainer", "TrainerEpochHooks"]

MIN_TRANSFORMERS = "5.3"  # the first release with Trainer._run_epoch / _init_training_state
TESTED_TRANSFORMERS = ("5.18.0", "5.24.0")

# The parameters IES reads or replaces, by name (the Trainer passes them as keywords).
_RUN_EPOCH = ("epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch")
_INIT_STATE = ("max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial")


def check_trainer(trainer_cls: type, version: str) -> None:
    """Raise ``ImportError`` unless ``trainer_cls`` has the two private methods IES needs.

    Example:
        >>> check_trainer(transformers.Trainer, transformers.__version__)
    """
    from packaging.version import Version

    problems = []
    if Version(version) < Version(MIN_TRANSFORMERS):
        problems.append(f"it is older than {MIN_TRANSFORMERS}")
    for name, needed in (("_run_epoch", _RUN_EPOCH), ("_init_training_state", _INIT_STATE)):
        fn = getattr(trainer_cls, name, None)
        have = () if fn is None else tuple(inspect.signature(fn).parameters)[1:]
        missing = [p for p in needed if p not in have]
        if missing:
            problems.append(f"Trainer.{name} lacks {missing}" if fn is not None else f"it has no Trainer.{name}")
    if problems:
        raise ImportError(
            f"ies.integrations.huggingface overrides two Trainer methods that the installed transformers {version} "
            f"does not have as expected: {'; '.join(problems)}. Install a tested version "
            f"({TESTED_TRANSFORMERS[0]} to {TESTED_TRANSFORMERS[-1]}): pip install 'transformers>={TESTED_TRANSFORMERS[0]}'"
        )


class TrainerEpochHooks:
    """Mixin for a ``Trainer`` subclass with a tracker in ``self.ies``: each epoch gets its real length,
    and a resume starts at the tracker's epoch. Needs ``self._ies_resume``: the saved IES state
    (``{"tracker": ..., "epoch_start_step": ...}``) when resuming, else None.
    """

    _ies_resume: Optional[Dict[str, Any]]

    def _run_epoch(self, **kwargs: Any) -> Any:
        # This epoch's batches, from the current active set (the loader's sampler reads it).
        steps = len(kwargs["train_dataloader"])
        kwargs["steps_in_epoch"] = steps
        kwargs["num_update_steps_per_epoch"] = max(1, math.ceil(steps / self.args.gradient_accumulation_steps))
        return super()._run_epoch(**kwargs)  # type: ignore[misc]

    def _init_training_state(self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int,
                             resume_from_checkpoint: Any, trial: Any) -> Tuple[int, int]:
        epochs, steps = super()._init_training_state(  # type: ignore[misc]
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        saved = self._ies_resume
        if resume_from_checkpoint is not None and saved is not None:
            # Epochs have different lengths: the global step no longer tells the epoch. IES knows it.
            epochs = int(saved["tracker"]["epoch"])
            done = self.state.global_step - int(saved["epoch_start_step"])
            steps = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps
        return epochs, steps
