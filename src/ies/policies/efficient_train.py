"""EfficientTrain-style resolution curriculum (Wang et al., 2023/2024)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SelectionPolicy, register_policy
from .random_remove import check_fraction

__all__ = ["EfficientTrain"]


@register_policy("efficient-train")
class EfficientTrain(SelectionPolicy):
    """Low-resolution-first curriculum after EfficientTrain / EfficientTrain++ (Wang et al.,
    ICCV 2023; TPAMI 2024): early epochs see only the low-frequency content of each image,
    at a smaller input size, and the size grows to the full one.

    Every sample trains every epoch. In epoch ``e`` the training inputs are down-sampled
    (bilinear, anti-aliased) to a side ``round(B(e) * H)`` with
    ``B(e) = min(1, b0 + (1 - b0) * e / round(ramp_fraction * total_epochs))``: linear from
    ``b0`` to full size over the first ``ramp_fraction`` of the run, full size afterwards.
    Test and validation inputs are always full size.

    Saving (an estimate): a sample trained at side ``h x w`` instead of ``H x W`` is counted
    as ``(h * w) / (H * W)`` of a forward+backward, i.e. the squared resolution fraction,
    since a convolutional net's cost scales with the number of pixels. That holds only if
    the model really runs on the smaller input, which needs a size-agnostic model (the
    CIFAR-style ``resnet*``, ``vgg16``, ``densenet121`` end with adaptive pooling).
    Fixed-size models (``small-cnn``, ``mlp``) cannot: pass ``keep_size=True`` to up-sample
    the low-passed image back to full size; then no saving is realised and none is counted.

    Deviations: EfficientTrain crops the low-frequency part of the 2-D Fourier spectrum;
    anti-aliased bilinear down-sampling is a close low-pass equivalent. Its weak-to-strong
    data-augmentation schedule (RandAugment magnitude) is not reproduced, and its
    step-wise ImageNet schedule is replaced by a linear ramp.

    Image data only: ``transform_inputs`` raises ``ValueError`` for inputs that are not
    4-D ``(N, C, H, W)`` batches.

    Args:
        b0: starting resolution fraction, in ``(0, 1]`` (EfficientTrain: 160/224 ~ 0.71;
            default 0.5).
        ramp_fraction: share of the run over which the resolution grows to full, in
            ``(0, 1]`` (default 0.6).
        keep_size: up-sample back to the full size (for fixed-size models; no saving).
    """

    saving_note = ("estimate: a sample trained at a reduced resolution counts as (h*w)/(H*W) of a "
                   "forward+backward (squared resolution fraction); not realised with keep_size=True")

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0,
                 b0: float = 0.5, ramp_fraction: float = 0.6, keep_size: bool = False) -> None:
        super().__init__(num_samples, total_epochs=total_epochs, seed=seed, forward_cost=forward_cost)
        self.b0 = check_fraction("b0", b0, low=0.0, high=1.0, low_open=True,
                                 hint=" (starting resolution fraction, e.g. 0.5-0.75)")
        self.ramp_fraction = check_fraction("ramp_fraction", ramp_fraction, low=0.0, high=1.0, low_open=True,
                                            hint=" (share of the run over which the resolution grows)")
        if not isinstance(keep_size, bool):
            raise ValueError(f"keep_size must be true or false, got {keep_size!r}")
        self.keep_size = keep_size
        self.ramp_epochs = max(1, int(round(self.ramp_fraction * total_epochs)))
        self._cost = 1.0  # cost fraction of the batch transformed last
        self._last_size: Optional[Tuple[int, int]] = None

    def resolution(self, epoch: Optional[int] = None) -> float:
        """The resolution fraction ``B(epoch)`` (default: the current epoch)."""
        e = self.epoch if epoch is None else epoch
        return min(1.0, self.b0 + (1.0 - self.b0) * e / self.ramp_epochs)

    def input_size(self, height: int, width: int, epoch: Optional[int] = None) -> Tuple[int, int]:
        b = self.resolution(epoch)
        return max(1, int(round(b * height))), max(1, int(round(b * width)))

    def transform_inputs(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"method 'efficient-train' is a resolution curriculum for image data (N, C, H, W); "
                f"this dataset's inputs have shape {tuple(x.shape)}. Use it with fashion-mnist or cifar10/100."
            )
        H, W = int(x.shape[-2]), int(x.shape[-1])
        h, w = self.input_size(H, W)
        self._last_size = (h, w)
        if (h, w) == (H, W):
            self._cost = 1.0
            return x
        small = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if self.keep_size:
            self._cost = 1.0
            return F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
        self._cost = (h * w) / (H * W)
        return small

    def check_model(self, model: torch.nn.Module, example: Tensor) -> None:
        """Refuse a model that only takes full-size inputs, with the fix, before any training."""
        if example.dim() != 4:
            self.transform_inputs(example)  # raises the image-data error, with its message
        if self.keep_size:
            return
        h, w = self.input_size(int(example.shape[-2]), int(example.shape[-1]), epoch=0)
        small = torch.zeros(*example.shape[:2], h, w, dtype=example.dtype, device=example.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(small)
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"method 'efficient-train' trains on {h}x{w} inputs early on, but this model only takes "
                f"{example.shape[-2]}x{example.shape[-1]} ({str(e).splitlines()[0]}). Use a model with global "
                f"pooling (small-cnn, resnet*, vgg16, densenet121) or efficient-train:keep_size=true."
            ) from None
        finally:
            model.train(was_training)

    def backprop_cost(self) -> float:
        return self._cost  # full-resolution equivalents of one sample at this epoch's resolution

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        size = self._last_size
        return {"resolution": self.resolution(), "input_size": None if size is None else f"{size[0]}x{size[1]}"}

