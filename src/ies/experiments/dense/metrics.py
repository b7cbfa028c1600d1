"""Dense-prediction metrics: mIoU from a confusion matrix, mAP through pycocotools.

mIoU is the PASCAL VOC one: a confusion matrix accumulated over every valid pixel of the test
set (the ignore label left out), IoU = TP / (TP + FP + FN) per class, averaged over the classes
that occur in the ground truth or the predictions. mAP is computed by pycocotools (the reference
COCO evaluator, a compiled wheel from PyPI with no torch dependency), not by hand: the headline
is AP at IoU 0.5 (VOC2007's measure, as the paper reports), with COCO's AP@[.5:.95] beside it.
"Difficult" objects are passed as ``iscrowd`` regions, so matching one is neither a hit nor a
false positive, as in VOC.
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "miou", "coco_map"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = 255) -> Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class, over valid pixels."""
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    t, p = t[keep], p[keep].clamp(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).view(num_classes, num_classes)


def miou(conf: Tensor) -> Tuple[float, Tensor]:
    """Mean IoU (in [0, 1]) over the classes present in truth or prediction, and the per-class IoU (NaN if absent)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    present = union > 0
    return (float(iou[present].mean()) if bool(present.any()) else 0.0), iou


def _coco_gt(boxes: Tensor, height: int, width: int, num_classes: int) -> Dict:
    images, anns = [], []
    for i in range(boxes.shape[0]):
        images.append({"id": i, "height": height, "width": width})
        for c, x1, y1, x2, y2, difficult in boxes[i].tolist():
            if c < 0:
                continue
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, w, h],
                         "area": w * h, "iscrowd": int(difficult > 0)})
    return {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(num_classes)]}


def coco_map(detections: List[Tuple[int, int, float, List[float]]], gt_boxes: Tensor, image_size: Tuple[int, int],
             num_classes: int) -> Dict[str, float]:
    """``{"ap50": ..., "ap": ...}`` in [0, 1] from pycocotools.

    ``detections``: ``(image, class, score, [x1, y1, x2, y2])``; ``gt_boxes``: ``(N, K, 6)``
    (class, x1, y1, x2, y2, difficult; class -1 pads).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError("mAP needs pycocotools: pip install instance-early-stopping[cli]") from None
    if not detections:
        return {"ap50": 0.0, "ap": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = _coco_gt(gt_boxes, image_size[0], image_size[1], num_classes)
        gt.createIndex()
        dets = [{"image_id": int(i), "category_id": int(c), "score": float(s),
                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for i, c, s, b in detections]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50 = float(ev.stats[0]), float(ev.stats[1])
    return {"ap50": max(ap50, 0.0), "ap": max(ap, 0.0)}  # -1 means "no ground truth": count it as 0
