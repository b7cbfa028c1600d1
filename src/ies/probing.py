"""The probe pass: forward-only per-sample losses of samples not trained this epoch, and when to probe.

One code path measures every probe, for the tracker, the engine and every integration:
:func:`probe_losses` (eval mode, no autograd, channels-last inputs when the model is
channels-last, optional autocast, pinned non-blocking copies to CUDA). The schedule of
who is probed when is two pure functions: :func:`staggered_due` (each excluded sample once
every ``r`` epochs, ``1/r`` of them each epoch) and :func:`backoff_next` (a sample that stays
excluded is probed less and less often).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from .dataset import IndexedDataset

__all__ = ["probe_losses", "default_forward", "to_device", "staggered_due", "backoff_next", "tune_probe_batch_size",
           "frozen_train_mode", "FROZEN_TYPES"]

DEFAULT_BATCH_SIZE = 256


def to_device(obj: Any, device: Optional[torch.device]) -> Any:
    """Move the tensors in a (nested) batch to ``device``: mappings (incl. Hugging Face's
    ``BatchEncoding``) become dicts, lists and tuples keep their type; ``None`` leaves it as is."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        if device.type == "cuda" and obj.device.type == "cpu":
            obj = obj.pin_memory()  # a pinned source lets the copy overlap with compute
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def default_forward(model: torch.nn.Module, batch: Any, loss_fn: Callable[..., Tensor]) -> Tensor:
    """``batch = (inputs, targets, ...)`` -> ``loss_fn(model(inputs), targets)``, per sample."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ValueError(
            "the default probe forward expects batches of (inputs, targets); for other batch "
            "structures pass forward=lambda model, batch: per_sample_losses"
        )
    return loss_fn(model(batch[0]), batch[1])


# Modules whose train mode changes state or draws random numbers: normalization layers that update
# running statistics, and dropout. ``frozen_train_mode`` keeps them in eval mode.
FROZEN_TYPES: Tuple[type, ...] = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm,
                                  torch.nn.modules.dropout._DropoutNd, torch.nn.AlphaDropout)


@contextlib.contextmanager
def frozen_train_mode(model: torch.nn.Module) -> Any:
    """The model in train mode with every BatchNorm/InstanceNorm and dropout module in eval mode.

    For models that return their losses only in train mode (torchvision's detectors): the loss
    code runs, but normalization layers use and keep their running statistics (no update) and
    dropout is off, so a probe changes nothing and measures the model deterministically. Every
    module's own mode is restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, FROZEN_TYPES):
                m.eval()
        yield model
    finally:
        for m, was in modes:
            m.training = was


def _is_tensor_data(data: Any) -> bool:
    return isinstance(data, (tuple, list)) and len(data) > 0 and all(isinstance(t, Tensor) for t in data)


def _batches(data: Any, idx: Tensor, batch_size: int, collate_fn: Optional[Callable], num_workers: int,
             pin: bool) -> Any:
    """Batches of ``data[idx]``: direct slices of in-memory tensors, else a DataLoader over a Subset."""
    if _is_tensor_data(data):
        n = data[0].shape[0]
        if any(t.shape[0] != n for t in data):
            raise ValueError(f"in-memory probe data must be tensors of equal length, got {[t.shape[0] for t in data]}")
        dev_idx = [idx.to(t.device) for t in data]
        for s in range(0, idx.numel(), batch_size):
            yield tuple(t.index_select(0, i[s : s + batch_size]) for t, i in zip(data, dev_idx))
        return
    if isinstance(data, IndexedDataset):
        data = data.dataset
    yield from DataLoader(Subset(data, idx.tolist()), batch_size=batch_size, shuffle=False,
                          collate_fn=collate_fn, num_workers=num_workers, pin_memory=pin)


def _channels_last(model: torch.nn.Module) -> bool:
    """Whether the model keeps its 4-D weights channels-last (then inputs should be too)."""
    ws = [p for p in model.parameters() if p.dim() == 4]
    return bool(ws) and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in ws)


@torch.no_grad()
def probe_losses(
    model: torch.nn.Module,
    data: Any,
    indices: Union[Tensor, Sequence[int]],
    loss_fn: Optional[Callable[..., Tensor]] = None,
    *,
    batch_size: Optional[int] = None,
    device: Optional[Union[str, torch.device]] = None,
    forward: Optional[Callable[[torch.nn.Module, Any], Tensor]] = None,
    collate_fn: Optional[Callable] = None,
    num_workers: int = 0,
    eval_mode: bool = True,
    autocast_dtype: Optional[torch.dtype] = None,
    frozen_train: bool = False,
    rng_seed: Optional[int] = None,
) -> Tensor:
    """Per-sample losses ``(len(indices),)`` float32 of ``data[indices]``, without autograd.

    ``data`` is a map-style dataset (batched by a DataLoader over a ``Subset``) or a tuple
    of in-memory tensors ``(x, y, ...)`` sliced directly (no per-sample Python). The loss is
    ``loss_fn(model(x), y)`` with ``reduction='none'``, or ``forward(model, batch)`` for any
    batch structure. The model runs in eval mode (as the paper's code does) and is restored
    afterwards; inputs are made channels-last when the model's conv weights are, and
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the pass under autocast as training does.

    **Models whose loss needs the targets or comes as a dict** (detectors; reduce per-pixel or
    per-box losses with :mod:`ies.dense`): ``forward=loss_fn``, ``loss_fn(model, batch) -> (B,)``.
    ``frozen_train=True`` runs it in :func:`frozen_train_mode` (train mode, for models that return
    losses only then, with no BatchNorm running-stat update and no dropout). ``rng_seed`` fixes
    random sampling inside the loss (anchor/proposal samplers): each batch runs under a forked RNG
    seeded ``rng_seed +`` the dataset index of its first sample, the global RNG left as it was;
    with ``batch_size=1`` every sample gets the same draws every epoch, so the second difference
    measures the model, not the sampler. Recipes: docs/dense.md.

    Example:
        >>> losses = probe_losses(model, (x, y), torch.tensor([3, 7]), nn.CrossEntropyLoss(reduction="none"))
        >>> torch.allclose(losses, F.cross_entropy(model.eval()(x[[3, 7]]), y[[3, 7]], reduction="none"))
        True
    """
    if loss_fn is None and forward is None:
        raise ValueError("probe_losses needs loss_fn(outputs, targets) or forward(model, batch)")
    bs = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
    device = torch.device(device) if device is not None else _model_device(model)
    cl = _channels_last(model)
    mode = frozen_train_mode(model) if frozen_train else _eval_mode(model, eval_mode)
    out = []
    with mode:
        batches = _batches(data, idx, bs, collate_fn, num_workers, pin=device.type == "cuda")
        for start, batch in zip(range(0, idx.numel(), bs), batches):
            batch = to_device(batch, device)
            if cl and isinstance(batch, tuple) and isinstance(batch[0], Tensor) and batch[0].dim() == 4:
                batch = (batch[0].contiguous(memory_format=torch.channels_last), *batch[1:])
            rng = _seeded(rng_seed + int(idx[start]), device) if rng_seed is not None else contextlib.nullcontext()
            with rng, torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                losses = forward(model, batch) if forward is not None else default_forward(model, batch, loss_fn)
            out.append(_checked(losses))
    return torch.cat(out) if out else torch.zeros(0, device=device)


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _checked(losses: Any) -> Tensor:
    """``losses`` detached as float32 if it is one loss per sample, else a ``ValueError`` saying what to do."""
    if not isinstance(losses, Tensor):
        raise ValueError(f"the probe loss returned a {type(losses).__name__}, not a (B,) tensor; reduce a dict "
                         "of losses to one loss per sample first (ies.dense.per_sample_mean / scatter_mean)")
    if losses.dim() != 1:
        raise ValueError(f"probe loss must be one value per sample (reduction='none'), got shape {tuple(losses.shape)}")
    return losses.detach().float()


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module, on: bool) -> Any:
    was_training = model.training
    if on:
        model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Any:
    """Draws from the global RNG (and this CUDA device's) seeded ``seed``, the RNG restored afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        yield


def tune_probe_batch_size(model: torch.nn.Module, data: Any, loss_fn: Callable[..., Tensor], *,
                          candidates: Sequence[int] = (64, 128, 256, 512, 1024), repeats: int = 3,
                          **kwargs: Any) -> Tuple[int, dict]:
    """The candidate batch size with the lowest measured probe time per sample on ``data``.

    Runs each candidate on ``max(candidates)`` samples ``repeats`` times (after a warm-up),
    alternating, and keeps the median. On CPU a conv net's activations for 1024 images fall
    out of cache (small-cnn: 0.85 of a training step per image at 1024 vs 0.46 at 128), on a
    GPU bigger batches usually win: measure instead of guessing. Returns ``(best, {size: s/sample})``.
    """
    n = len(data[0]) if _is_tensor_data(data) else len(data)
    idx = torch.arange(min(n, max(candidates)))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    probe_losses(model, data, idx[: min(candidates)], loss_fn, **kwargs)  # warm-up
    times: dict = {c: [] for c in candidates}
    for _ in range(repeats):
        for c in candidates:
            sync()
            t0 = time.perf_counter()
            probe_losses(model, data, idx, loss_fn, batch_size=c, **kwargs)
            sync()
            times[c].append((time.perf_counter() - t0) / idx.numel())
    med = {c: sorted(v)[len(v) // 2] for c, v in times.items()}
    return min(med, key=med.get), med


def staggered_due(indices: Tensor, epoch: int, every: int) -> Tensor:
    """Bool like ``indices``: whose turn it is at ``epoch`` when each is probed once every ``every`` epochs.

    Deterministic by index and epoch: sample ``i`` is due when ``(i + epoch) % every == 0``,
    so ``1/every`` of any index range is due each epoch and each sample exactly once in
    ``every`` consecutive epochs.
    """
    if every == 1:
        return torch.ones_like(indices, dtype=torch.bool)
    return (indices + epoch).remainder_(every) == 0


def backoff_next(interval: Tensor, due: Tensor, probed: Tensor, stays: Tensor, newly: Tensor, epoch: int, *,
                 first: int, cap: int) -> Tuple[Tensor, Tensor]:
    """Back-off probe intervals and due epochs after the end of ``epoch`` (all ``(N,)``).

    ``probed``: measured at the end of ``epoch``; ``stays``: excluded in ``epoch`` and the
    next; ``newly``: excluded next epoch but not in ``epoch``. A probed sample that stays
    excluded doubles its interval (up to ``cap``) and is due that many epochs later; a newly
    excluded one starts at ``first`` and is due at the end of its first excluded epoch.
    ``due`` is the epoch at whose end a sample is probed next. Returns ``(interval, due)``.

    Example (``first=1, cap=8``): probed at the ends of epochs e+1, e+3, e+7, e+15, e+23, ...
    """
    # Selects as integer arithmetic (x + g * (y - x)): torch.where and masked_fill with a bool
    # mask are ~10x slower on CPU, and this runs over all N samples every epoch.
    g, nw = (probed & stays).to(interval.dtype), newly.to(interval.dtype)
    interval = interval + g * ((interval * 2).clamp_(max=cap) - interval)
    interval += nw * (first - interval)
    due = due + g.to(due.dtype) * (interval + epoch - due)
    return interval, due.add_(nw.to(due.dtype) * (epoch + 1 - due))
