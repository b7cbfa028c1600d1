"""The Hugging Face integration's rows and losses, framework-free (torch only): per-sample losses
for the Trainer's model outputs, and the train loader's index-attaching dataset and collator.

Example:
    >>> import torch
    >>> per_sample_loss(torch.zeros(2, 3), torch.tensor([0, 2]))       # cross-entropy of uniform logits: ln 3
    tensor([1.0986, 1.0986])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["LOSS_TYPES", "per_sample_loss", "auto_loss_type", "WithIndex", "IndexCollator"]

LOSS_TYPES = ("auto", "classification", "regression", "causal_lm", "token")


def per_sample_loss(logits: Tensor, labels: Tensor, loss_type: str = "classification",
                    ignore_index: int = -100) -> Tensor:
    """One loss per sample ``(B,)``, in float32.

    ``loss_type``: ``"classification"`` (logits ``(B, C)``, cross-entropy),
    ``"regression"`` (``(B,)``/``(B, 1)``, MSE), ``"causal_lm"`` (``(B, T, V)``, labels
    shifted by one, as the model's own loss) or ``"token"`` (``(B, T, V)``, masked LM /
    token classification). Token losses are averaged over the sample's labels that are
    not ``ignore_index`` (padding); a sample with none gets 0.

    Example:
        >>> logits = torch.zeros(2, 4, 10)                   # (B, T, V): uniform next-token predictions
        >>> labels = torch.tensor([[1, 2, 3, -100], [4, 5, 6, 7]])
        >>> per_sample_loss(logits, labels, "causal_lm")     # ln 10 over each row's labelled tokens
        tensor([2.3026, 2.3026])
    """
    if loss_type not in LOSS_TYPES[1:]:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES[1:]}, got {loss_type!r}")
    if loss_type == "classification":
        if logits.dim() != 2:
            raise ValueError(f"classification logits must be (B, C), got {tuple(logits.shape)}; set loss_type")
        return F.cross_entropy(logits.float(), labels.long(), reduction="none", ignore_index=ignore_index)
    if loss_type == "regression":
        return F.mse_loss(logits.float().reshape(labels.shape[0], -1).squeeze(-1), labels.float(), reduction="none")
    if logits.dim() != 3:
        raise ValueError(f"{loss_type} logits must be (B, T, V), got {tuple(logits.shape)}; set loss_type")
    if loss_type == "causal_lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    tok = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten().long(), ignore_index=ignore_index,
                          reduction="none").view(labels.shape)
    n = (labels != ignore_index).sum(1)
    return tok.sum(1) / n.clamp(min=1)


def auto_loss_type(model: torch.nn.Module, logits: Tensor, labels: Tensor) -> str:
    if logits.dim() == 3:
        # A decoder-only generator (PreTrainedModel.can_generate, public) predicts the next token:
        # its labels are shifted. Masked LMs, token classifiers and encoder-decoders align them.
        inner = getattr(model, "module", model)
        config = getattr(inner, "config", None)
        causal = (callable(getattr(inner, "can_generate", None)) and inner.can_generate()
                  and not getattr(config, "is_encoder_decoder", False))
        return "causal_lm" if causal else "token"
    if labels.is_floating_point() and (logits.dim() == 1 or logits.shape[-1] == 1):
        return "regression"
    return "classification"


class WithIndex(Dataset):
    """``dataset[i] -> (i, dataset[i])``: the train loader learns each sample's index from the sampler."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[int, Any]:
        return i, self.dataset[i]


class IndexCollator:
    """Collate ``(i, row)`` pairs with the Trainer's collator; the indices go under ``index_column``.

    ``keep``: the columns the model's forward accepts (plus labels), as the Trainer's own
    column filter keeps them when ``remove_unused_columns`` is on; None keeps every column.
    """

    def __init__(self, collate: Callable[[List[Any]], Any], index_column: str, keep: Optional[Sequence[str]]) -> None:
        self.collate = collate
        self.index_column = index_column
        self.keep = None if keep is None else frozenset(keep)

    def __call__(self, pairs: List[Tuple[int, Any]]) -> Any:
        rows = [row for _, row in pairs]
        if self.keep is not None:
            rows = [{k: v for k, v in row.items() if k in self.keep} if isinstance(row, Mapping) else row
                    for row in rows]
        batch = self.collate(rows)
        batch[self.index_column] = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        return batch
