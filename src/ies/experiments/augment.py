"""Seeded, batched image augmentation on tensors (no per-sample Python loop).

The three steps run in torchvision's usual order, each vectorized over the batch:

1. random crop with zero padding: an exact integer shift in ``[-pad, pad]`` per sample,
   done by advanced indexing into the zero-padded batch (no interpolation, so pixels are
   copied bit-exactly);
2. horizontal flip: ``torch.where`` on a per-sample coin;
3. rotation by an angle uniform in ``[-degrees, degrees]`` about the image centre:
   one ``F.affine_grid`` + ``F.grid_sample`` (bilinear, ``align_corners=False``, zero fill).

Crop and flip are kept out of the affine grid on purpose: folded into it, bilinear
resampling at float-rounded coordinates would blur integer shifts by ~1e-7, and
``nearest`` would alias the rotation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BatchAugment"]


class BatchAugment:
    """Seeded, batched augmentation of (B, C, H, W) image tensors: random crop with zero
    padding, horizontal flip, rotation up to ±degrees. Appendix A of the IES paper uses
    crop(pad 4) + flip + rotation 15 for CIFAR.

    Randomness comes from a local ``torch.Generator`` (seeded at init, or the one passed
    to ``__call__``), never the global RNG, so two instances with the same seed produce
    identical outputs call for call. Random numbers are drawn on the generator's device
    and moved to the input's device, so any input device works.
    """

    def __init__(self, crop_padding: int = 4, flip: bool = True, rotation_degrees: float = 15.0, seed: int = 0):
        if int(crop_padding) != crop_padding or crop_padding < 0:
            raise ValueError(f"crop_padding must be a non-negative integer, got {crop_padding}; pass e.g. 4, or 0 to disable cropping")
        if not math.isfinite(float(rotation_degrees)) or rotation_degrees < 0:
            raise ValueError(
                f"rotation_degrees must be a finite number >= 0, got {rotation_degrees}; "
                "pass e.g. 15 (angles are drawn from [-15, 15]), or 0 to disable rotation"
            )
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.rotation_degrees = float(rotation_degrees)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __repr__(self) -> str:
        return (
            f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, "
            f"rotation_degrees={self.rotation_degrees}, seed={self.seed})"
        )

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Augment a batch ``x`` of shape (B, C, H, W); returns the same shape and dtype."""
        if x.dim() != 4:
            raise ValueError(
                f"BatchAugment expects (B, C, H, W) images, got shape {tuple(x.shape)}; "
                "add a channel dim with x.unsqueeze(1), and do not augment 1-D data"
            )
        g = self.generator if generator is None else generator
        if x.shape[0] == 0:
            return x
        if self.crop_padding > 0:
            x = self._crop(x, g)
        if self.flip:
            x = self._flip(x, g)
        if self.rotation_degrees > 0:
            x = self._rotate(x, g)
        return x

    # Each step draws its random numbers in a fixed order, so streams are reproducible.

    def _crop(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, c, h, w = x.shape
        p = self.crop_padding
        padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p), zero fill
        # Top-left corner of each crop window in the padded image, in [0, 2p].
        offs = torch.randint(0, 2 * p + 1, (2, b), generator=g, device=g.device).to(x.device)
        rows = offs[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
        cols = offs[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
        bi = torch.arange(b, device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
        ci = torch.arange(c, device=x.device)[None, :, None, None]  # (1, C, 1, 1)
        # Broadcast gather -> (B, C, H, W); one indexing op for the whole batch.
        return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]

    def _flip(self, x: Tensor, g: torch.Generator) -> Tensor:
        coin = torch.rand(x.shape[0], generator=g, device=g.device).to(x.device) < 0.5  # (B,)
        return torch.where(coin[:, None, None, None], x.flip(-1), x)

    def _rotate(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        u = torch.rand(b, generator=g, device=g.device, dtype=torch.float64)
        angle = ((2.0 * u - 1.0) * math.radians(self.rotation_degrees)).to(x.device)  # (B,)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # affine_grid maps output coords to input coords in [-1, 1] units per axis; the
        # h/w and w/h factors make it a true rotation in pixels on non-square images.
        theta = torch.zeros(b, 2, 3, dtype=torch.float64, device=x.device)
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * (h / w)
        theta[:, 1, 0] = sin * (w / h)
        theta[:, 1, 1] = cos
        # grid_sample needs float; half/bfloat16/integer inputs are resampled in float32.
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)  # (B, H, W, 2)
        out = F.grid_sample(work, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if out.dtype == x.dtype:
            return out
        if x.is_floating_point():
            return out.to(x.dtype)
        if x.dtype == torch.bool:
            return out > 0.5
        info = torch.iinfo(x.dtype)
        return out.round().clamp(info.min, info.max).to(x.dtype)
