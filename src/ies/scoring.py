"""The forward-only scoring pass: per-sample losses of samples left out of training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from .dataset import IndexedDataset

__all__ = ["score_losses", "default_forward", "to_device"]


def to_device(obj: Any, device: Optional[torch.device]) -> Any:
    """Move the tensors in a (nested) batch to ``device``: mappings (incl. Hugging Face's
    ``BatchEncoding``) become dicts, lists and tuples keep their type; ``None`` leaves it as is."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
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
            "the default scoring forward expects batches of (inputs, targets); for other batch "
            "structures pass forward=lambda model, batch: per_sample_losses"
        )
    return loss_fn(model(batch[0]), batch[1])


@torch.no_grad()
def score_losses(
    model: torch.nn.Module,
    dataset: Any,
    indices: Union[Tensor, Sequence[int]],
    loss_fn: Optional[Callable[..., Tensor]] = None,
    *,
    batch_size: int = 256,
    device: Optional[Union[str, torch.device]] = None,
    forward: Optional[Callable[[torch.nn.Module, Any], Tensor]] = None,
    collate_fn: Optional[Callable] = None,
    num_workers: int = 0,
    eval_mode: bool = True,
) -> Tensor:
    """Per-sample losses ``(len(indices),)`` of ``dataset[indices]`` without gradients.

    ``loss_fn(outputs, targets)`` must return unreduced losses (``reduction='none'``);
    alternatively ``forward(model, batch)`` returns them for any batch structure. The
    model is put in eval mode (as the paper's code does) and restored afterwards.
    """
    if loss_fn is None and forward is None:
        raise ValueError("score_losses needs loss_fn(outputs, targets) or forward(model, batch)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(dataset, IndexedDataset):
        dataset = dataset.dataset
    idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size, shuffle=False,
                        collate_fn=collate_fn, num_workers=num_workers)
    was_training = model.training
    if eval_mode:
        model.eval()
    out = []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            losses = forward(model, batch) if forward is not None else default_forward(model, batch, loss_fn)
            if losses.dim() != 1:
                raise ValueError(
                    f"scoring loss must be one value per sample (reduction='none'), got shape {tuple(losses.shape)}"
                )
            out.append(losses.detach().float())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device=device)
