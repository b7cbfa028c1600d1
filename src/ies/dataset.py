"""Give each batch its dataset indices, without touching the dataset itself."""

from __future__ import annotations

from typing import Any, Tuple

from torch.utils.data import Dataset, IterableDataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so item ``i`` is ``(i, dataset[i])``.

    With the default collate a batch is ``(indices, item)``: ``for idx, (x, y) in loader``.
    """

    def __init__(self, dataset: Any) -> None:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError("IndexedDataset needs a map-style dataset (with __getitem__ and __len__): IES keeps one "
                             "state per sample index and samples the active indices; for a stream, materialize it or "
                             "wrap it in a map-style view (docs/usage.md, 'IterableDataset')")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[int, Any]:
        return index, self.dataset[index]
