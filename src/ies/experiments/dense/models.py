"""Dense-prediction models in plain torch (no torchvision: its compiled ops do not load beside this CPU torch).

* ``deeplab-mini``: DeepLab v3 in miniature. A small ResNet (basic blocks, output stride 4, the
  last stage dilated instead of strided, as DeepLab does), an ASPP head (1x1, two atrous 3x3 and
  image pooling, concatenated and projected), logits upsampled bilinearly to the input size.
  Output ``(N, C, H, W)``.
* ``centernet-mini``: CenterNet ("Objects as Points") on the same backbone: per class a centre
  heatmap, plus box size and centre offset, at stride 4. Output ``(N, C + 4, H/4, W/4)``: heatmap
  logits, then (w, h) in output cells, then the (x, y) offset of the centre inside its cell.
  Decoding is max-pool peak picking (no NMS), in :mod:`ies.experiments.dense.tasks`.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DeepLabMini", "CenterNetMini", "DENSE_MODELS", "DENSE_MODEL_INPUTS", "STRIDE"]

STRIDE = 4  # output stride of the backbone (and of the detector's maps)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1, k: int = 3) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout))


class _Block(nn.Module):
    """ResNet basic block (two 3x3 convs and a shortcut), optionally strided or dilated."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.a = _conv_bn(cin, cout, stride, dilation)
        self.b = _conv_bn(cout, cout, 1, dilation)
        self.skip = _conv_bn(cin, cout, stride, k=1) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class _Backbone(nn.Module):
    """Stem + three stages: ``(N, 3, H, W)`` -> ``(N, width * 4, H / 4, W / 4)``."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_conv_bn(in_channels, w), nn.ReLU())
        self.layers = nn.Sequential(_Block(w, w), _Block(w, 2 * w, stride=2), _Block(2 * w, 4 * w, stride=2),
                                    _Block(4 * w, 4 * w, dilation=2))
        self.out_channels = 4 * w

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


class _ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLab v3), rates scaled to a stride-4 map of a small image."""

    def __init__(self, cin: int, cout: int, rates=(2, 4)):
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(_conv_bn(cin, cout, k=1), nn.ReLU())] + [
            nn.Sequential(_conv_bn(cin, cout, dilation=r), nn.ReLU()) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU())
        self.project = nn.Sequential(_conv_bn(cout * (len(rates) + 2), cout, k=1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class DeepLabMini(nn.Module):
    """``(N, 3, H, W)`` -> per-pixel logits ``(N, num_classes, H, W)``."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.backbone = _Backbone(in_channels, width)
        self.aspp = _ASPP(self.backbone.out_channels, 4 * width)
        self.classifier = nn.Conv2d(4 * width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class CenterNetMini(nn.Module):
    """``(N, 3, H, W)`` -> ``(N, num_classes + 4, H/4, W/4)``: heatmap logits, size, offset."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = _Backbone(in_channels, width)
        c = self.backbone.out_channels

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, out, 1))

        self.heat, self.size, self.offset = head(num_classes), head(2), head(2)
        nn.init.constant_(self.heat[-1].bias, -2.19)  # CenterNet's prior: sigmoid = 0.1 at the start

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x)
        return torch.cat([self.heat(f), self.size(f), self.offset(f)], 1)


def _deeplab(num_classes: int, in_channels: int = 3, **_: Any) -> nn.Module:
    return DeepLabMini(num_classes, in_channels)


def _centernet(num_classes: int, in_channels: int = 3, **_: Any) -> nn.Module:
    return CenterNetMini(num_classes, in_channels)


DENSE_MODELS: Dict[str, Any] = {"deeplab-mini": _deeplab, "centernet-mini": _centernet}
DENSE_MODEL_INPUTS: Dict[str, str] = {"deeplab-mini": "segmentation", "centernet-mini": "detection"}
