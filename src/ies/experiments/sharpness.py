"""Sharpness of the loss at the current weights: Hessian top eigenvalue and the SAM value.

* :func:`hessian_top_eigenvalue`: power iteration with Hessian-vector products (double
  backward), the Hessian of the mean loss over a fixed set of samples.
* :func:`sam_value`: ``L(w + rho * g / ||g||) - L(w)``, the first-order SAM sharpness
  (Foret et al., 2021) with ``rho = 0.05`` by default.

Both leave the model's weights, gradients and train/eval mode as they found them.

Example:
    >>> lam = hessian_top_eigenvalue(model, x[:512], y[:512], iters=20)
    >>> s = sam_value(model, x[:512], y[:512], rho=0.05)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["hessian_vector_product", "hessian_top_eigenvalue", "sam_value", "loss_and_grad"]

LossFn = Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> mean loss (scalar)


def _mean_ce(out: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(out, y)


def _params(model: nn.Module) -> List[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def _measuring(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout / batch-stat updates) and untouched ``.grad`` for the duration."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _chunks(n: int, batch_size: Optional[int]) -> List[Tuple[int, int]]:
    """``(start, end)`` of each chunk of ``batch_size`` (all ``n`` at once if None)."""
    if n < 1:
        raise ValueError("x has no samples: the mean loss over an empty set is undefined; pass at least one sample")
    b = n if not batch_size else max(1, int(batch_size))
    return [(s, min(s + b, n)) for s in range(0, n, b)]


def hessian_vector_product(model: nn.Module, x: Tensor, y: Tensor, vec: Sequence[Tensor], *,
                           loss_fn: LossFn = _mean_ce, batch_size: Optional[int] = None) -> List[Tensor]:
    """``H v`` for the Hessian of the mean loss over ``(x, y)`` w.r.t. the trainable parameters.

    ``vec`` is a list shaped like the parameters. With ``batch_size`` the set is processed in
    chunks, each weighted by its share of samples, so the result is the full-set HVP.
    """
    params = _params(model)
    n = x.shape[0]
    out: Optional[List[Tensor]] = None
    for s, e in _chunks(n, batch_size):
        loss = loss_fn(model(x[s:e]), y[s:e])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vec))
        hv = torch.autograd.grad(dot, params)
        w = (e - s) / n
        out = [w * h for h in hv] if out is None else [o + w * h for o, h in zip(out, hv)]
    return [o.detach() for o in out]  # type: ignore[union-attr]  # _chunks yields at least one chunk


def _norm(vs: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((v * v).sum() for v in vs))


def _power_iteration(model: nn.Module, x: Tensor, y: Tensor, *, iters: int, seed: int, loss_fn: LossFn,
                     batch_size: Optional[int], tol: float, shift: float = 0.0) -> float:
    """Dominant eigenvalue of ``H - shift * I`` (Rayleigh quotient of the last normalized iterate)."""
    params = _params(model)
    gen = torch.Generator().manual_seed(int(seed))
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    nv = _norm(v)
    v = [t / nv for t in v]
    lam = float("nan")
    for _ in range(int(iters)):
        hv = hessian_vector_product(model, x, y, v, loss_fn=loss_fn, batch_size=batch_size)
        if shift:
            hv = [h - shift * t for h, t in zip(hv, v)]
        new = float(sum((h * t).sum() for h, t in zip(hv, v)))  # Rayleigh quotient, ||v|| = 1
        nh = _norm(hv)
        if float(nh) == 0.0:
            return 0.0
        v = [h / nh for h in hv]
        done = tol > 0 and lam == lam and abs(new - lam) <= tol * max(abs(new), 1e-12)
        lam = new
        if done:
            break
    return lam


def hessian_top_eigenvalue(model: nn.Module, x: Tensor, y: Tensor, *, iters: int = 20, seed: int = 0,
                           loss_fn: LossFn = _mean_ce, batch_size: Optional[int] = None,
                           tol: float = 0.0, largest: str = "algebraic") -> float:
    """Top eigenvalue of the Hessian of the mean loss over ``(x, y)`` by power iteration.

    ``iters`` Hessian-vector products from a seeded Gaussian start; returns the Rayleigh
    quotient ``v^T H v`` of the last normalized iterate. Plain power iteration finds the
    eigenvalue of largest *magnitude* (``largest="magnitude"``). With the default
    ``largest="algebraic"``, if that one is negative (negative curvature dominates, e.g. early
    in training) a second run on ``H - lambda I`` (another ``iters`` HVPs) recovers the largest
    algebraic eigenvalue, the usual "sharpness". ``tol > 0`` stops early once the estimate
    changes by less than ``tol`` relative.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if largest not in ("algebraic", "magnitude"):
        raise ValueError(f"largest must be 'algebraic' or 'magnitude', got {largest!r}")
    with _measuring(model):
        kw = dict(iters=iters, seed=seed, loss_fn=loss_fn, batch_size=batch_size, tol=tol)
        lam = _power_iteration(model, x, y, **kw)
        if largest == "algebraic" and lam < 0:
            lam = _power_iteration(model, x, y, shift=lam, **kw) + lam
    return lam


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, *, loss_fn: LossFn = _mean_ce,
                  batch_size: Optional[int] = None) -> Tuple[float, List[Tensor]]:
    """Mean loss over ``(x, y)`` and its gradient (a list like the parameters), chunked."""
    params = _params(model)
    n = x.shape[0]
    total = 0.0
    grads: Optional[List[Tensor]] = None
    for s, e in _chunks(n, batch_size):
        w = (e - s) / n
        loss = loss_fn(model(x[s:e]), y[s:e]) * w
        g = torch.autograd.grad(loss, params)
        total += float(loss.detach())
        grads = list(g) if grads is None else [a + b for a, b in zip(grads, g)]
    return total, [g.detach() for g in grads]  # type: ignore[union-attr]  # at least one chunk


def _mean_loss(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, batch_size: Optional[int]) -> float:
    n = x.shape[0]
    with torch.no_grad():
        return sum(float(loss_fn(model(x[s:e]), y[s:e])) * (e - s) / n for s, e in _chunks(n, batch_size))


def sam_value(model: nn.Module, x: Tensor, y: Tensor, *, rho: float = 0.05, loss_fn: LossFn = _mean_ce,
              batch_size: Optional[int] = None) -> float:
    """SAM sharpness ``L(w + rho * g/||g||) - L(w)`` on ``(x, y)``; weights are restored after.

    If the gradient is exactly zero the direction is undefined and 0.0 is returned.
    """
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    params = _params(model)
    with _measuring(model):
        base = _mean_loss(model, x, y, loss_fn, batch_size)
        _, g = loss_and_grad(model, x, y, loss_fn=loss_fn, batch_size=batch_size)
        gn = _norm(g)
        if float(gn) == 0.0:
            return 0.0
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, t in zip(params, g):
                p.add_(t, alpha=float(rho / gn))
        try:
            perturbed = _mean_loss(model, x, y, loss_fn, batch_size)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)  # exact restore (p + e - e can differ in the last bit)
    return perturbed - base
