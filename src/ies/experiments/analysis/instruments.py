"""Engine callbacks that measure what the analyses need, outside the timed regions where possible.

* :class:`LossProbe`: after each epoch, forward-only losses of *all* training samples
  (eval mode, untimed) and the order-k criterion on them (the tracker's pure function; no
  tracker, since nothing is excluded from measurement). Adds ``mastered_o{k}`` (samples
  meeting the criterion with threshold ``delta``), ``cv_diff_o{k}`` (coefficient of variation across samples of
  ``|k-th difference|`` of the latest losses), ``cv_score_o{k}`` (the same for the
  criterion's moving average) and the full-set training loss / accuracy. Optionally keeps
  every epoch's per-sample losses in memory (forgetting analysis).
* :class:`GradNormProbe`: mean over the epoch's mini-batches of the total L2 norm of the
  gradients (``after_backward``: one fused norm per batch, no host sync until epoch end).
* :class:`SharpnessProbe`: every ``every`` epochs, the Hessian top eigenvalue (power
  iteration) and the SAM value on a fixed seeded subset of the training set.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from ...criterion import column_criterion, history_length, kth_difference
from ..engine import EngineCallback, EpochContext, per_sample_losses
from ..sharpness import hessian_top_eigenvalue, sam_value

__all__ = ["LossProbe", "GradNormProbe", "SharpnessProbe", "coefficient_of_variation"]


def coefficient_of_variation(values: Tensor) -> float:
    """``std / mean`` across the finite entries (population std); NaN if undefined."""
    v = values[torch.isfinite(values)].double()
    if v.numel() < 2:
        return float("nan")
    mean = v.mean()
    if float(mean) == 0.0:
        return float("nan")
    return float(v.std(unbiased=False) / mean)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class LossProbe(EngineCallback):
    """Full-training-set losses after every epoch, and the order-k criterion computed on them.

    Every sample gets a loss every epoch (nothing is excluded from *measurement*), so the
    counts answer "how many samples meet the order-k criterion now", independent of what
    the training method does. The criterion is the pure function the tracker uses
    (:func:`ies.criterion.column_criterion`) on the last ``history_length(k, window, m)``
    loss vectors.
    """

    def __init__(self, orders: Sequence[int] = (0, 1, 2, 3), *, threshold: float = 1e-3, window: int = 3,
                 m: int = 1, keep_losses: bool = False, batch_size: int = 1024) -> None:
        self.orders = [int(k) for k in orders]
        self.threshold, self.window, self.m = float(threshold), int(window), int(m)
        self.keep_losses = keep_losses
        self.batch_size = int(batch_size)
        self._keep = max([history_length(k, self.window, self.m) for k in self.orders] + [1])
        self.recent: List[Tensor] = []  # the last ``_keep`` loss vectors (N,), oldest first
        self.epochs_seen = 0
        self.losses: List[Tensor] = []  # per epoch (N,) if keep_losses
        self.correct: List[Tensor] = []

    def _order_stats(self, k: int, n: int) -> Dict[str, Any]:
        h = history_length(k, self.window, self.m)
        count = torch.full((n,), self.epochs_seen, dtype=torch.int32)
        crit = (column_criterion(self.recent[-h:], count, order=k, window=self.window, m=self.m)
                if len(self.recent) >= h else torch.full((n,), float("inf")))  # (N,), inf: not judged yet
        row: Dict[str, Any] = {f"mastered_o{k}": int((crit < self.threshold).sum()),
                               f"cv_score_o{k}": coefficient_of_variation(crit),
                               f"cv_diff_o{k}": None, f"mean_absdiff_o{k}": None}
        if len(self.recent) >= k + 1:
            a = kth_difference(torch.stack(self.recent[-(k + 1):], dim=1), k).abs().reshape(n)  # (N,)
            row[f"cv_diff_o{k}"] = coefficient_of_variation(a)
            row[f"mean_absdiff_o{k}"] = float(a[torch.isfinite(a)].mean())
        return row

    def epoch_end(self, ctx: EpochContext) -> Optional[Dict[str, Any]]:
        dev = _device(ctx.model)
        losses, correct = per_sample_losses(ctx.model, ctx.data.x_train.to(dev), ctx.data.y_train.to(dev),
                                            self.batch_size)
        losses, correct = losses.detach().float().cpu(), correct.cpu()
        row: Dict[str, Any] = {"full_train_loss": float(losses.mean()),
                               "full_train_acc": 100.0 * float(correct.float().mean())}
        if self.keep_losses:
            self.losses.append(losses.clone())
            self.correct.append(correct.clone())
        self.recent = (self.recent + [losses])[-self._keep:]
        self.epochs_seen += 1
        for k in self.orders:
            row.update(self._order_stats(k, losses.numel()))
        return row


class GradNormProbe(EngineCallback):
    """Mean mini-batch gradient norm per epoch (key ``grad_norm``)."""

    def __init__(self) -> None:
        self._sum: Optional[Tensor] = None
        self._n = 0

    def after_backward(self, model: nn.Module, indices: Tensor, losses: Tensor) -> None:
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads) if hasattr(torch, "_foreach_norm") else [g.norm() for g in grads]
        total = torch.linalg.vector_norm(torch.stack(list(norms)))
        self._sum = total if self._sum is None else self._sum + total
        self._n += 1

    def epoch_end(self, ctx: EpochContext) -> Optional[Dict[str, Any]]:
        out = {"grad_norm": float(self._sum) / self._n if self._n else None, "grad_batches": self._n}
        self._sum, self._n = None, 0
        return out


class SharpnessProbe(EngineCallback):
    """Hessian top eigenvalue and SAM value on a fixed subset, every ``every`` epochs and at the last.

    Cost per measurement: ``iters`` Hessian-vector products plus two forward passes and one
    gradient on ``subset_size`` samples (chunked by ``batch_size``). The subset is drawn
    once from ``seed`` so every method is measured on the same samples.
    """

    def __init__(self, *, every: int = 5, subset_size: int = 512, iters: int = 20, rho: float = 0.05,
                 seed: int = 0, batch_size: Optional[int] = 512, first: bool = True) -> None:
        if every < 1 or subset_size < 1 or iters < 1:
            raise ValueError("every, subset_size and iters must be >= 1")
        self.every, self.subset_size, self.iters, self.rho = int(every), int(subset_size), int(iters), float(rho)
        self.seed, self.batch_size, self.first = int(seed), batch_size, first
        self.subset: Optional[Tensor] = None

    def due(self, epoch: int, total: int) -> bool:
        return epoch % self.every == 0 or epoch == total or (self.first and epoch == 1)

    def epoch_end(self, ctx: EpochContext) -> Optional[Dict[str, Any]]:
        if not self.due(ctx.epoch, int(ctx.config.epochs)):
            return {"hessian_top_eig": None, "sam": None}
        n = len(ctx.data)
        if self.subset is None:
            g = torch.Generator().manual_seed(self.seed)
            self.subset = torch.randperm(n, generator=g)[: min(self.subset_size, n)].sort().values
        dev = _device(ctx.model)
        x = ctx.data.x_train[self.subset].to(dev)
        y = ctx.data.y_train[self.subset].to(dev)
        eig = hessian_top_eigenvalue(ctx.model, x, y, iters=self.iters, seed=self.seed, batch_size=self.batch_size)
        sam = sam_value(ctx.model, x, y, rho=self.rho, batch_size=self.batch_size)
        return {"hessian_top_eig": eig, "sam": sam}
