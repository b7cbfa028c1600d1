"""Synthetic label noise for the robustness analysis (the paper's Appendix G).

* :func:`symmetric_noise`: exactly ``round(rate * N)`` samples, chosen uniformly, get a
  label drawn uniformly from the *other* classes.
* :func:`instance_dependent_noise`: the part/instance-dependent generation of Xia et al.
  (2020, "Part-dependent label noise", their ``get_instance_noisy_label``): each sample
  gets a flip rate ``q_i`` from a normal around ``rate`` (std 0.1) truncated to [0, 1];
  a random projection ``W[y_i]`` (features -> class scores, one matrix per true class)
  scores the other classes, the true class is masked out, a softmax turns the scores into
  where a flip goes, and the new label is drawn from ``(1 - q_i) at y_i, q_i * softmax``
  elsewhere. The expected noise rate is the mean of the truncated normal: ``rate`` to within
  0.006 for rates in [0.2, 0.8] (truncation lifts it for small rates, e.g. ~0.13 for 0.1, as in
  Xia et al.'s code; rate 0 gives no noise).

All generation is driven by one seed through a private ``torch.Generator``; the global
RNGs are untouched. Both return ``(noisy_labels, flipped)`` where ``flipped`` is
``noisy != clean``: a label is never "flipped" to itself.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["symmetric_noise", "instance_dependent_noise", "truncated_normal", "make_noisy_labels", "NOISE_TYPES"]

NOISE_TYPES = ("symmetric", "instance")


def _check(labels: Tensor, rate: float, num_classes: int) -> None:
    if labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be a 1-D integer tensor, got shape {tuple(labels.shape)} dtype {labels.dtype}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (a label needs another class to flip to), got {num_classes!r}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be in [0, 1] (e.g. 0.2 for 20% noise), got {rate!r}")


def symmetric_noise(labels: Tensor, rate: float, num_classes: int, *, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Flip exactly ``round(rate * N)`` labels, each to a uniformly chosen different class."""
    _check(labels, rate, num_classes)
    gen = torch.Generator().manual_seed(int(seed))
    y = labels.cpu().long()
    n = y.numel()
    k = int(round(float(rate) * n))
    idx = torch.randperm(n, generator=gen)[:k]
    offset = torch.randint(1, num_classes, (k,), generator=gen)  # 1..C-1: never the same class
    noisy = y.clone()
    noisy[idx] = (y[idx] + offset) % num_classes
    return noisy.to(labels.device), (noisy != y).to(labels.device)


def truncated_normal(n: int, mean: float, std: float, low: float, high: float, gen: torch.Generator) -> Tensor:
    """``n`` draws of ``N(mean, std^2)`` restricted to ``[low, high]`` (rejection sampling)."""
    if not low <= high:
        raise ValueError(f"empty interval [{low}, {high}]")
    if std <= 0:
        return torch.full((n,), min(max(mean, low), high), dtype=torch.float64)
    out = torch.empty(0, dtype=torch.float64)
    for _ in range(1000):
        need = n - out.numel()
        if need <= 0:
            break
        d = mean + std * torch.randn(max(2 * need, 16), generator=gen, dtype=torch.float64)
        out = torch.cat([out, d[(d >= low) & (d <= high)][:need]])
    if out.numel() < n:  # interval far in the tail: fall back to clamping
        out = torch.cat([out, torch.full((n - out.numel(),), min(max(mean, low), high), dtype=torch.float64)])
    return out


def instance_dependent_noise(x: Tensor, labels: Tensor, rate: float, num_classes: int, *, seed: int = 0,
                             std: float = 0.1) -> Tuple[Tensor, Tensor]:
    """Instance-dependent noise of Xia et al. (2020); the expected flip fraction is ``rate``.

    ``x`` ``(N, ...)`` are the features the random projection reads (flattened); ``std`` is
    the spread of the per-sample flip rates (0.1 in Xia et al.).
    """
    _check(labels, rate, num_classes)
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but labels has {labels.shape[0]}")
    gen = torch.Generator().manual_seed(int(seed))
    y = labels.cpu().long()
    n, c = y.numel(), num_classes
    feats = x.detach().cpu().reshape(n, -1).double()
    d = feats.shape[1]
    # (N,) per-sample flip rate; rate 0 means no noise (the truncated normal would not be 0-mean).
    q = truncated_normal(n, float(rate), std if rate > 0 else 0.0, 0.0, 1.0, gen)
    w = torch.randn(c, d, c, generator=gen, dtype=torch.float64)  # (C, D, C): one projection per true class
    scores = torch.empty(n, c, dtype=torch.float64)
    for k in range(c):  # per true class: (N_k, D) @ (D, C), no (N, D, C) temporary
        sel = y == k
        scores[sel] = feats[sel] @ w[k]
    scores[torch.arange(n), y] = float("-inf")  # the true class is never a flip target
    p = q.unsqueeze(1) * torch.softmax(scores, dim=1)  # (N, C), the true class gets 0
    p[torch.arange(n), y] = 1.0 - q
    noisy = torch.multinomial(p.clamp_min(0.0), 1, generator=gen).squeeze(1)
    return noisy.to(labels.device), (noisy != y).to(labels.device)


def make_noisy_labels(kind: str, x: Tensor, labels: Tensor, rate: float, num_classes: int, *,
                      seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Dispatch on ``kind`` (``"symmetric"`` or ``"instance"``)."""
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes, seed=seed)
    if kind == "instance":
        return instance_dependent_noise(x, labels, rate, num_classes, seed=seed)
    raise ValueError(f"unknown noise type {kind!r}; choose one of {', '.join(NOISE_TYPES)}")
