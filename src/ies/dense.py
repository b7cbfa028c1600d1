"""Per-sample losses for dense prediction: segmentation pixels and detection boxes.

IES needs one loss per sample. A segmentation loss is one value per pixel, a detector's one
value per anchor, proposal or box, often computed over the whole batch at once. Two pure
functions reduce them to one loss per image:

* :func:`per_sample_mean`: ``(B, ...)`` per-element losses -> ``(B,)``, the mean over each
  sample's valid elements (an ignore label or a mask says which are not: VOC marks object
  borders and "difficult" pixels 255).
* :func:`scatter_mean`: ``(M,)`` losses of boxes/anchors from the whole batch, each carried with
  the index of its image -> ``(B,)``, the mean per image.

**A sample with nothing to average** (every pixel ignored, no box) gets ``NaN``. That is the
documented "no measurement" value: the tracker counts it as non-finite and gives that sample an
infinite criterion until ``order + window`` finite losses follow, so it is **never excluded by
accident** (a 0 would look perfectly stable and be excluded at once). Do not backpropagate the
NaN: reduce the batch with :func:`batch_mean`, which skips it (and passes it no gradient).

In a training loop (recipes for segmentation and detectors: docs/dense.md)::

    pix = F.cross_entropy(logits, mask, reduction="none", ignore_index=255)   # (B, H, W)
    per_image = per_sample_mean(pix, target=mask, ignore_index=255)          # (B,)
    loss = batch_mean(tracker.record(idx, per_image))
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["per_sample_mean", "scatter_mean", "batch_mean", "EMPTY_SAMPLE_LOSS"]

EMPTY_SAMPLE_LOSS = float("nan")  # the loss of a sample with no valid element: "not measured"


def per_sample_mean(losses: Tensor, valid: Optional[Tensor] = None, *, target: Optional[Tensor] = None,
                    ignore_index: Optional[int] = None) -> Tensor:
    """``(B,)`` mean of ``losses`` ``(B, ...)`` over each sample's valid elements.

    Valid elements are given by ``valid`` (bool, shape of ``losses``) or by ``target`` and
    ``ignore_index`` (elements whose target equals ``ignore_index`` are left out), or are all
    elements when neither is given. A sample without a valid element gets
    :data:`EMPTY_SAMPLE_LOSS` (NaN). The value of an ignored element never matters, not even
    a NaN or an infinity, and gets no gradient.
    """
    if losses.dim() < 1:
        raise ValueError("per_sample_mean needs per-element losses (reduction='none'), got a scalar")
    if valid is not None and target is not None:
        raise ValueError("give either valid= or target= with ignore_index=, not both")
    if target is not None:
        if ignore_index is None:
            raise ValueError("target= needs ignore_index= (e.g. 255 for PASCAL VOC)")
        valid = target != ignore_index
    if valid is None:
        return losses.reshape(losses.shape[0], -1).mean(1)
    if valid.shape != losses.shape:
        raise ValueError(f"the valid mask has shape {tuple(valid.shape)} but the losses {tuple(losses.shape)}; "
                         "they must match element for element")
    valid = valid.reshape(losses.shape[0], -1).to(torch.bool)
    flat = torch.where(valid, losses.reshape(losses.shape[0], -1), torch.zeros((), dtype=losses.dtype,
                                                                                  device=losses.device))
    count = valid.sum(1)
    mean = flat.sum(1) / count.clamp(min=1).to(losses.dtype)
    return torch.where(count > 0, mean, torch.full_like(mean, EMPTY_SAMPLE_LOSS))


def scatter_mean(values: Tensor, image_index: Tensor, batch_size: int) -> Tensor:
    """``(batch_size,)``: the mean of ``values`` ``(M,)`` per image, ``image_index`` ``(M,)`` in ``[0, batch_size)``.

    For losses computed over all boxes/anchors of a batch at once, each carried with the
    index of its image in the batch. An image with no entry gets :data:`EMPTY_SAMPLE_LOSS`.
    Vectorized (``index_add_``), differentiable in ``values``.

    Example:
        >>> scatter_mean(torch.tensor([1., 3., 5.]), torch.tensor([0, 0, 2]), 3)
        tensor([2., nan, 5.])
    """
    if values.dim() != 1 or image_index.shape != values.shape:
        raise ValueError(f"scatter_mean needs values (M,) and image_index (M,), got {tuple(values.shape)} and "
                         f"{tuple(image_index.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
    index = image_index.to(device=values.device, dtype=torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch_size):
        raise ValueError(f"image_index must lie in [0, {batch_size}); got values in "
                         f"[{int(index.min())}, {int(index.max())}]")
    total = torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add(0, index, values)
    count = torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add_(
        0, index, torch.ones_like(values))
    mean = total / count.clamp(min=1)
    return torch.where(count > 0, mean, torch.full_like(mean, EMPTY_SAMPLE_LOSS))


def batch_mean(per_sample: Tensor) -> Tensor:
    """The mean of the finite per-sample losses, for backpropagation (0 when there is none).

    Skips the NaN of empty samples (and any other non-finite loss, which therefore gets no
    gradient: check ``stats.nonfinite`` if training may diverge).
    """
    ok = torch.isfinite(per_sample)
    safe = torch.where(ok, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
    return safe.sum() / ok.sum().clamp(min=1).to(per_sample.dtype)
