"""What the engine's loop needs from a task: per-sample losses, the batch loss, accuracy, evaluation.

One loop (:mod:`ies.experiments.engine`) trains every task; a task object supplies
``losses(outputs, targets) -> (B,)`` (what IES records and probes), ``reduce(losses)`` (the loss
to backpropagate), ``correct(outputs, targets)`` (the training-accuracy numerator) and
``evaluate(model, x, y, batch_size) -> (mean loss, metric in %)``, reported as ``test_acc``.
Classification is here; segmentation (mIoU) and detection (mAP50) are in
:mod:`ies.experiments.dense.tasks`, chosen by the data's ``task``.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassificationTask", "task_for_data", "per_sample_losses", "evaluate", "cross_entropy"]


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y, reduction="none")


def per_sample_losses(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tuple[Tensor, Tensor]:
    """Forward-only losses and correctness ``(M,)`` in eval mode, batched; the model's mode is restored
    even when a forward raises (as :func:`ies.probing.probe_losses` does)."""
    was = model.training
    model.eval()
    losses, correct = [], []
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                out = model(x[s : s + batch_size])
                losses.append(cross_entropy(out, y[s : s + batch_size]))
                correct.append(out.argmax(1) == y[s : s + batch_size])
    finally:
        model.train(was)
    if not losses:
        return torch.zeros(0), torch.zeros(0, dtype=torch.bool)
    return torch.cat(losses), torch.cat(correct)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tuple[float, float]:
    """Mean loss and accuracy (in %) on ``(x, y)``."""
    losses, correct = per_sample_losses(model, x, y, batch_size)
    return float(losses.mean()), 100.0 * float(correct.float().mean())


class ClassificationTask:
    """Cross-entropy per sample; accuracy."""

    name, metric = "classification", "accuracy"
    losses = staticmethod(cross_entropy)

    @staticmethod
    def reduce(losses: Tensor) -> Tensor:
        return losses.mean()

    @staticmethod
    def correct(out: Tensor, y: Tensor) -> Tensor:
        return (out.argmax(1) == y).sum()

    @staticmethod
    def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tuple[float, float]:
        return evaluate(model, x, y, batch_size)


def task_for_data(task: str, num_classes: int, augment: bool) -> Any:
    """The task object for a :class:`~ies.experiments.data.TensorData`'s ``task``."""
    if task == "classification":
        return ClassificationTask()
    if augment:  # BatchAugment moves pixels but not masks or boxes
        raise ValueError(f"augmentation is for classification; {task} data has masks or boxes that would not "
                         "follow the image: drop --augment")
    from .dense.tasks import task_for

    return task_for(task, num_classes)
