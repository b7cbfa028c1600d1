"""What the engine needs per task: one loss per sample, a headline metric, and the datasets.

The engine trains every task with the same loop (:mod:`ies.experiments.engine`); a task object
supplies ``losses(outputs, targets) -> (B,)`` (the per-sample losses IES records and probes),
``reduce`` (the batch loss to backpropagate), ``correct`` (the training-accuracy numerator) and
``evaluate(model, x, y, batch_size) -> (mean loss, metric in %)``. The metric is reported in the
engine's ``test_acc`` column: mIoU for segmentation, mAP at IoU 0.5 for detection.

Targets: segmentation masks ``(N, H, W)`` int64 with 255 ignored; detection boxes ``(N, K, 6)``
(class, x1, y1, x2, y2, difficult; class -1 pads), so both slice like class labels.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...dense import batch_mean, per_sample_mean, scatter_mean
from .metrics import coco_map, confusion_matrix, miou
from .models import STRIDE

__all__ = ["SegmentationTask", "DetectionTask", "task_for", "centernet_losses", "centernet_decode",
           "DENSE_DATASETS"]

# Datasets that imply a dense task (the rest are classification).
DENSE_DATASETS = {"seg-shapes": "segmentation", "det-shapes": "detection", "voc-seg": "segmentation",
                  "voc-det": "detection"}


def _batched_eval(model: nn.Module, x: Tensor, batch_size: int):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], batch_size):
                yield s, model(x[s : s + batch_size])
    finally:
        model.train(was)


class SegmentationTask:
    """Per-pixel cross-entropy, the mean over each image's valid pixels; mIoU."""

    name, metric = "segmentation", "mIoU"

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        pix = F.cross_entropy(out, y, reduction="none", ignore_index=self.ignore_index)
        return per_sample_mean(pix, target=y, ignore_index=self.ignore_index)

    def reduce(self, losses: Tensor) -> Tensor:
        return batch_mean(losses)  # an image with no valid pixel (NaN) is not backpropagated

    def correct(self, out: Tensor, y: Tensor) -> Tensor:
        """Sum over the batch of each image's pixel accuracy."""
        valid = y != self.ignore_index
        hit = (out.argmax(1) == y) & valid
        return (hit.flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)).sum()

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tuple[float, float]:
        conf = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        losses = []
        for s, out in _batched_eval(model, x, batch_size):
            t = y[s : s + out.shape[0]]
            losses.append(self.losses(out, t).cpu())
            conf += confusion_matrix(out.argmax(1).cpu(), t.cpu(), self.num_classes, self.ignore_index)
        return float(batch_mean(torch.cat(losses))), 100.0 * miou(conf)[0]


def _focal(logits: Tensor, target: Tensor) -> Tensor:
    """CenterNet's penalty-reduced focal loss per element (``target`` is 1 exactly at centres)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target == 1
    pos_loss = -(1 - p) ** 2 * torch.log(p)
    neg_loss = -((1 - target) ** 4) * p ** 2 * torch.log(1 - p)
    return torch.where(pos, pos_loss, neg_loss)


def _centres(y: Tensor, h: int, w: int) -> Tuple[Tensor, ...]:
    valid = y[..., 0] >= 0
    cx, cy = (y[..., 1] + y[..., 3]) / (2 * STRIDE), (y[..., 2] + y[..., 4]) / (2 * STRIDE)
    ix, iy = cx.floor().clamp(0, w - 1).long(), cy.floor().clamp(0, h - 1).long()
    bw, bh = (y[..., 3] - y[..., 1]) / STRIDE, (y[..., 4] - y[..., 2]) / STRIDE
    return valid, cx, cy, ix, iy, bw, bh


def centernet_losses(out: Tensor, y: Tensor, num_classes: int, size_weight: float = 0.1) -> Tensor:
    """``(B,)`` CenterNet loss per image: focal heatmap loss / objects + 0.1 * size L1 + offset L1.

    ``out``: ``(B, C + 4, h, w)`` from :class:`CenterNetMini`; ``y``: ``(B, K, 6)`` boxes in input
    pixels. The heatmap target is a Gaussian per object (sigma a sixth of its mean side, in cells)
    with 1 at its centre cell; the size and offset terms are the mean over the image's objects
    (:func:`ies.dense.scatter_mean`), 0 for an image with none.
    """
    b, _, h, w = out.shape
    c = num_classes
    valid, cx, cy, ix, iy, bw, bh = _centres(y, h, w)
    sigma = ((bw + bh) / 6).clamp(min=0.5)[..., None, None]
    gy = torch.arange(h, device=out.device).view(1, 1, h, 1)
    gx = torch.arange(w, device=out.device).view(1, 1, 1, w)
    gauss = torch.exp(-((gx - ix[..., None, None]) ** 2 + (gy - iy[..., None, None]) ** 2) / (2 * sigma ** 2))
    onehot = F.one_hot(y[..., 0].clamp(min=0).long(), c).to(out.dtype) * valid[..., None]  # (B, K, C)
    heat = (gauss.unsqueeze(2) * onehot[..., None, None]).amax(1) if y.shape[1] else out.new_zeros(b, c, h, w)
    num_pos = (heat == 1).flatten(1).sum(1).clamp(min=1)
    focal = _focal(out[:, :c], heat).flatten(1).sum(1) / num_pos
    rows = torch.arange(b, device=out.device).view(b, 1).expand_as(ix)
    maps = out[:, c:].permute(0, 2, 3, 1)[rows, iy, ix]  # (B, K, 4): w, h, dx, dy at each centre
    reg = size_weight * (maps[..., 0:2] - torch.stack([bw, bh], -1)).abs().sum(-1) \
        + (maps[..., 2:4] - torch.stack([cx - ix, cy - iy], -1)).abs().sum(-1)
    per_image = scatter_mean(reg[valid], rows[valid], b)
    return focal + torch.nan_to_num(per_image, nan=0.0)


def centernet_decode(out: Tensor, num_classes: int, top_k: int = 20, min_score: float = 0.01
                     ) -> List[Tuple[int, int, float, List[float]]]:
    """Detections ``(image, class, score, [x1, y1, x2, y2])`` by 3x3 max-pool peak picking (no NMS)."""
    b, _, h, w = out.shape
    heat = torch.sigmoid(out[:, :num_classes])
    peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
    scores, flat = peaks.flatten(1).topk(min(top_k, peaks[0].numel()), dim=1)
    cls, cell = flat // (h * w), flat % (h * w)
    iy, ix = cell // w, cell % w
    maps = out[:, num_classes:].flatten(2).gather(2, cell.unsqueeze(1).expand(-1, 4, -1))  # (B, 4, k)
    cx = (ix + maps[:, 2]) * STRIDE
    cy = (iy + maps[:, 3]) * STRIDE
    bw, bh = maps[:, 0].clamp(min=0) * STRIDE, maps[:, 1].clamp(min=0) * STRIDE
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
    keep = scores >= min_score
    out_list = []
    for i, k in zip(*torch.nonzero(keep, as_tuple=True)):  # at most top_k per image, on the host once
        out_list.append((int(i), int(cls[i, k]), float(scores[i, k]), boxes[i, k].tolist()))
    return out_list


class DetectionTask:
    """CenterNet losses per image; mAP at IoU 0.5 (pycocotools)."""

    name, metric = "detection", "mAP50"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def losses(self, out: Tensor, y: Tensor) -> Tensor:
        return centernet_losses(out, y, self.num_classes)

    def reduce(self, losses: Tensor) -> Tensor:
        return batch_mean(losses)

    def correct(self, out: Tensor, y: Tensor) -> Tensor:
        return out.new_zeros(())  # no per-image accuracy for detection; see the test mAP

    def evaluate(self, model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tuple[float, float]:
        dets: List[Any] = []
        losses = []
        for s, out in _batched_eval(model, x, batch_size):
            losses.append(self.losses(out, y[s : s + out.shape[0]]).cpu())
            dets += [(s + i, c, sc, box) for i, c, sc, box in centernet_decode(out.float().cpu(), self.num_classes)]
        ap = coco_map(dets, y.cpu(), (x.shape[-2], x.shape[-1]), self.num_classes)
        return float(batch_mean(torch.cat(losses))), 100.0 * ap["ap50"]


def task_for(kind: str, num_classes: int) -> Optional[Any]:
    """The task object for ``kind`` (a :class:`TensorData`'s ``task``), or None for classification."""
    if kind == "segmentation":
        return SegmentationTask(num_classes)
    if kind == "detection":
        return DetectionTask(num_classes)
    return None
