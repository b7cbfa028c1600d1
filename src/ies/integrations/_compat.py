"""Where IES depends on how ``transformers.Trainer`` runs an epoch, and the checks that it still does.

IES changes the number of batches in every epoch. How the Trainer copes depends on its version:

* 4.57 to 5.2: the epoch loop (inline in ``Trainer._inner_training_loop``) reads
  ``len(train_dataloader)`` at every epoch start, so each epoch gets its real length on its own.
  On resume it derives the epoch from ``global_step // num_update_steps_per_epoch`` inside that
  loop, which is wrong once epochs differ in length, and no method can change it: IES refuses to
  resume there (below).
* 5.3 and later: the length is planned once and passed to ``Trainer._run_epoch``, and the resumed
  epoch comes from ``Trainer._init_training_state``. No public hook changes either, so
  :class:`TrainerEpochHooks` overrides these two methods, and nothing else private.

The checks test behaviour, not names: every epoch :func:`check_epoch` compares what the Trainer
did (optimizer steps, its epoch counter) with the epoch's train loader and IES's own epoch, and a
resumed run checks that the Trainer let IES set the epoch; a mismatch raises ``RuntimeError``
naming the installed and the tested versions. A transformers release that changes this loop
therefore fails at its first epoch instead of training with wrong epoch lengths.
Tested: :data:`TESTED_TRANSFORMERS` (docs/integrations.md, ``scripts/check_versions.sh``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

__all__ = ["MIN_TRANSFORMERS", "TESTED_TRANSFORMERS", "check_version", "check_epoch", "TrainerEpochHooks"]

MIN_TRANSFORMERS = "4.57.1"  # the oldest release tested (4.57.0 was yanked from PyPI)
TESTED_TRANSFORMERS = ("4.57.1", "4.57.6", "5.0.0", "5.25.0")


def _install_hint(version: str) -> str:
    return (f"installed transformers {version}; tested: {', '.join(TESTED_TRANSFORMERS)}: "
            f"pip install 'transformers>={MIN_TRANSFORMERS},<={TESTED_TRANSFORMERS[-1]}'")


def check_version(version: str) -> None:
    """Raise ``ImportError`` for a transformers older than :data:`MIN_TRANSFORMERS`.

    Example:
        >>> check_version("5.25.0")
        >>> check_version("4.46.0")
        Traceback (most recent call last):
        ...
        ImportError: ies.integrations.huggingface needs transformers >= 4.57.1 (installed transformers 4.46.0; ...
    """
    from packaging.version import Version

    if Version(version) < Version(MIN_TRANSFORMERS):
        raise ImportError(f"ies.integrations.huggingface needs transformers >= {MIN_TRANSFORMERS} "
                          f"({_install_hint(version)})")


def check_epoch(version: str, ies_epoch: int, batches: int, accumulation: int, steps_run: int,
                trainer_epoch: Optional[float]) -> None:
    """Raise ``RuntimeError`` unless the Trainer ran IES's epoch ``ies_epoch`` at its real length.

    ``batches``: the epoch's train loader length; ``steps_run``: optimizer steps the Trainer took
    in it; ``trainer_epoch``: ``TrainerState.epoch`` at the epoch's end (the Trainer sets it to
    ``epoch + 1`` after the epoch's last step). Call it only for an epoch that ran to its end.

    Example:
        >>> check_epoch("5.25.0", ies_epoch=2, batches=5, accumulation=2, steps_run=3, trainer_epoch=3.0)
        >>> check_epoch("9.0.0", ies_epoch=2, batches=5, accumulation=2, steps_run=2, trainer_epoch=2.8)
        Traceback (most recent call last):
        ...
        RuntimeError: transformers.Trainer did not run IES's epoch 2 at its length: ...
    """
    expected = math.ceil(batches / max(1, accumulation))
    problems = []
    if steps_run != expected:
        problems.append(f"it took {steps_run} optimizer steps where the epoch's {batches} batches make {expected}")
    if trainer_epoch is None or abs(trainer_epoch - (ies_epoch + 1)) > 1e-6:
        problems.append(f"its epoch counter ended at {trainer_epoch} instead of {ies_epoch + 1}")
    if problems:
        raise RuntimeError(f"transformers.Trainer did not run IES's epoch {ies_epoch} at its length: "
                           f"{'; '.join(problems)}. This transformers changed how it runs an epoch "
                           f"({_install_hint(version)})")


class TrainerEpochHooks:
    """Mixin for a ``Trainer`` subclass with a tracker in ``self.ies`` (transformers 5.3 and later
    call these methods; earlier ones never do): each epoch gets its real length, and a resume
    starts at the tracker's epoch. Needs ``self._ies_resume``: the saved IES state
    (``{"tracker": ..., "epoch_start_step": ...}``) when resuming, else None.
    """

    _ies_resume: Optional[Dict[str, Any]]
    _ies_epoch_set: bool = False  # the Trainer let IES set the resumed epoch (checked at train begin)

    def _run_epoch(self, **kwargs: Any) -> Any:
        # This epoch's batches, from the current active set (the loader's sampler reads it).
        steps = len(kwargs["train_dataloader"])
        kwargs["steps_in_epoch"] = steps
        kwargs["num_update_steps_per_epoch"] = max(1, math.ceil(steps / self.args.gradient_accumulation_steps))  # type: ignore[attr-defined]
        return super()._run_epoch(**kwargs)  # type: ignore[misc]

    def _init_training_state(self, *args: Any, **kwargs: Any) -> Tuple[int, int]:
        epochs, steps = super()._init_training_state(*args, **kwargs)  # type: ignore[misc]
        saved = self._ies_resume
        if saved is not None:
            # Epochs have different lengths: the global step no longer tells the epoch. IES knows it.
            epochs = int(saved["tracker"]["epoch"])
            done = self.state.global_step - int(saved["epoch_start_step"])  # type: ignore[attr-defined]
            steps = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps  # type: ignore[attr-defined]
            self._ies_epoch_set = True
        return epochs, steps
