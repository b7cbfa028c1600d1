"""Synthetic dense-prediction data: coloured shapes on a noisy canvas, masks and boxes known exactly.

Generated locally and deterministically from a seed (a local ``torch.Generator``; same seed, same
tensors on every machine with the same torch), so a 3-seed comparison needs no download and fits
in minutes on one CPU core.

Each image holds 1 to ``max_objects`` shapes of three classes (1 square, 2 disc, 3 triangle; 0 is
the background) at random sizes, places and colours; the class is the shape, never the colour, and
later shapes occlude earlier ones. Segmentation masks mark the one-pixel border between regions
with the ignore label 255, as PASCAL VOC does. Detection targets are each shape's exact bounding
box ``[x1, y1, x2, y2)`` in pixels.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SHAPE_CLASSES", "IGNORE_INDEX", "render_shapes", "segmentation_shapes", "detection_shapes",
           "BOX_FIELDS"]

SHAPE_CLASSES = ("background", "square", "disc", "triangle")
IGNORE_INDEX = 255
# A detection target is (N, K, 6) float32: class, x1, y1, x2, y2, difficult; padding rows have class -1.
BOX_FIELDS = ("class", "x1", "y1", "x2", "y2", "difficult")


def _shape_masks(cls: Tensor, size: Tensor, cx: Tensor, cy: Tensor, canvas: int) -> Tensor:
    """Bool ``(N, K, H, W)``: the pixels of each shape (class 1 square, 2 disc, 3 triangle)."""
    grid = torch.arange(canvas, dtype=torch.float32) + 0.5
    y, x = grid.view(1, 1, -1, 1), grid.view(1, 1, 1, -1)
    cx, cy, half = cx[..., None, None], cy[..., None, None], size[..., None, None] / 2
    dx, dy = (x - cx).abs(), y - cy
    square = (dx <= half) & (dy.abs() <= half)
    disc = dx ** 2 + dy ** 2 <= half ** 2
    triangle = (dy.abs() <= half) & (dx <= (dy + half) / 2)  # apex up, base as wide as the shape is tall
    c = cls[..., None, None]
    return torch.where(c == 1, square, torch.where(c == 2, disc, triangle))


def render_shapes(n: int, canvas: int, max_objects: int, min_size: int, max_size: int,
                  gen: torch.Generator) -> Tuple[Tensor, Tensor, Tensor]:
    """``n`` images ``(n, 3, canvas, canvas)``, their label maps ``(n, H, W)`` int64 (no ignore border)
    and boxes ``(n, max_objects, 6)`` (class -1 for absent objects)."""
    k = max_objects
    count = torch.randint(1, k + 1, (n, 1), generator=gen)
    present = torch.arange(k).view(1, k) < count  # (n, K)
    cls = torch.randint(1, len(SHAPE_CLASSES), (n, k), generator=gen)
    size = torch.randint(min_size, max_size + 1, (n, k), generator=gen).float()
    lo = size / 2
    cx = lo + torch.rand(n, k, generator=gen) * (canvas - size)
    cy = lo + torch.rand(n, k, generator=gen) * (canvas - size)
    masks = _shape_masks(cls, size, cx, cy, canvas) & present[..., None, None]  # (n, K, H, W)
    colour = 0.35 + 0.65 * torch.rand(n, k, 3, generator=gen)
    background = 0.3 * torch.rand(n, 3, 1, 1, generator=gen)
    img = background + 0.08 * torch.randn(n, 3, canvas, canvas, generator=gen)
    labels = torch.zeros(n, canvas, canvas, dtype=torch.int64)
    for j in range(k):  # later shapes on top
        m = masks[:, j]
        img = torch.where(m[:, None], colour[:, j, :, None, None] + 0.05 * img, img)
        labels = torch.where(m, cls[:, j, None, None], labels)
    ys, xs = masks.any(3), masks.any(2)  # (n, K, H), (n, K, W)
    idx = torch.arange(canvas).view(1, 1, -1)
    big = canvas + 1
    x1 = torch.where(xs, idx, big).amin(2)
    x2 = torch.where(xs, idx, -1).amax(2) + 1
    y1 = torch.where(ys, idx, big).amin(2)
    y2 = torch.where(ys, idx, -1).amax(2) + 1
    boxes = torch.stack([cls.float(), x1.float(), y1.float(), x2.float(), y2.float(), torch.zeros(n, k)], -1)
    boxes[~present] = torch.tensor([-1.0, 0, 0, 0, 0, 0])
    return img.clamp_(0, 1), labels, boxes


def ignore_borders(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``labels`` with every pixel whose 3x3 neighbourhood holds two labels set to ``ignore_index``."""
    lab = labels.float().unsqueeze(1)
    hi = F.max_pool2d(lab, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-lab, 3, stride=1, padding=1)
    return labels.masked_fill((hi != lo).squeeze(1), ignore_index)


def _split(make, train: int, test: int, seed: int):
    gen = torch.Generator().manual_seed(int(seed))
    return make(train, gen), make(test, gen)


def segmentation_shapes(train: int = 1000, test: int = 300, *, seed: int = 42, canvas: int = 32
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 3, H, W)``, masks ``(N, H, W)`` int64 in
    ``0..3`` with 255 on region borders. Deterministic in ``seed``."""
    def make(n, gen):
        img, labels, _ = render_shapes(n, canvas, 3, canvas // 5, canvas // 2, gen)
        return img, ignore_borders(labels)

    (xtr, ytr), (xte, yte) = _split(make, train, test, seed)
    return xtr, ytr, xte, yte


def detection_shapes(train: int = 1000, test: int = 300, *, seed: int = 42, canvas: int = 32
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x_train, y_train, x_test, y_test)``: images ``(N, 3, H, W)`` and boxes ``(N, 3, 6)``
    (:data:`BOX_FIELDS`; class in ``0..2`` for square, disc, triangle, -1 for padding). Deterministic in ``seed``."""
    def make(n, gen):
        img, _, boxes = render_shapes(n, canvas, 3, canvas // 6, canvas // 3, gen)
        boxes[..., 0] = torch.where(boxes[..., 0] > 0, boxes[..., 0] - 1, boxes[..., 0])  # classes from 0
        return img, boxes

    (xtr, ytr), (xte, yte) = _split(make, train, test, seed)
    return xtr, ytr, xte, yte
