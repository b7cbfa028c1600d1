"""In-memory datasets for the IES experiments.

Every loader returns a :class:`TensorData`: float32 inputs and int64 labels held as
tensors, already normalized, so the training loop only has to slice and move them.

* ``mnist1d``: generated locally with ``mnist1d.data.make_dataset`` (never downloaded)
  and cached as ``.npz``.
* ``fashion-mnist``: parsed from the IDX files (``.gz`` or plain).
* ``cifar10`` / ``cifar100``: parsed from the standard "python version" pickle batches.
* ``text-topics``: topic sentences as token ids, 20% of the training labels flipped, generated from
  ``data_seed`` (:mod:`ies.experiments.text`).

No loader downloads anything; a missing dataset raises ``FileNotFoundError`` saying
where to get it. The file formats are read, and every file checked, in
:mod:`ies.experiments.datafiles`: a corrupt or inconsistent file raises one ``ValueError``
naming the file and the fix before any training starts, and the CIFAR pickles are read with a
restricted unpickler, so a crafted file cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .datafiles import read_cifar, read_fashion_mnist

__all__ = [
    "TensorData",
    "DATASETS",
    "DATASET_INPUTS",
    "load_dataset",
    "subset_classes",
    "resize_images",
    "default_cache_dir",
]

DATASETS: Tuple[str, ...] = ("mnist1d", "fashion-mnist", "cifar10", "cifar100", "seg-shapes", "det-shapes", "voc-seg",
                              "voc-det", "text-topics")
# The kind of input each dataset gives: "1d" = (N, L) signals, "image" = (N, C, H, W) images, "tokens" = (N, L)
# integer token ids
# (models.MODEL_INPUTS says what each model takes; RunConfig.validate compares the two).
DATASET_INPUTS: Dict[str, str] = {"mnist1d": "1d", "fashion-mnist": "image", "cifar10": "image", "cifar100": "image",
                                  "seg-shapes": "segmentation", "det-shapes": "detection", "voc-seg": "segmentation",
                                  "voc-det": "detection", "text-topics": "tokens"}  # dense: experiments/dense/

# Bump when the cached mnist1d arrays change meaning, so stale caches are ignored.
_MNIST1D_CACHE_VERSION = 1


@dataclass
class TensorData:
    """A dataset held as tensors in memory.

    ``x_*`` are float32 (``(N, L)`` for 1-D data, ``(N, C, H, W)`` for images) or int64 token ids
    (``(N, L)`` for text) and ``y_*`` are int64 class indices in ``[0, num_classes)``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    x_val: Optional[Tensor] = None
    y_val: Optional[Tensor] = None
    num_classes: int = 10
    name: str = ""
    image: bool = False  # True for (N, C, H, W) image data (augmentation applies)
    task: str = "classification"  # or "segmentation" / "detection": y are masks / boxes (experiments/dense/)

    def __len__(self) -> int:
        """Number of training samples."""
        return int(self.x_train.shape[0])


# ----------------------------------------------------------------------------- public API


def load_dataset(
    name: str,
    *,
    data_dir: Optional[str] = None,
    train_size: Optional[int] = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    cache_dir: Optional[str] = None,
    data_seed: int = 42,
) -> TensorData:
    """Load dataset ``name`` (one of :data:`DATASETS`) as tensors.

    Args:
        name: dataset name, case-insensitive.
        data_dir: folder holding the dataset files (file-based datasets only).
        train_size: size of the train split. For mnist1d it sets how many samples are
            generated (4000 train / 1000 test when None; `ies` runs default to 10000); for the others it takes a seeded
            random subset of the official train split (default: all of it).
        val_fraction: fraction in ``[0, 0.5)`` of the train split held out, seeded, as
            ``x_val``/``y_val`` and removed from training.
        seed: seed of the train subset and the validation split only. Pass the same value
            across training seeds to keep the splits fixed.
        cache_dir: where generated mnist1d arrays are cached (default ``$IES_CACHE_DIR``
            or ``~/.cache/ies``).
        data_seed: seed of the mnist1d generator, independent of ``seed`` so the data
            is the same for every training seed.
    """
    key = name.lower().strip()
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 0.5:
        raise ValueError(
            f"val_fraction must be in [0, 0.5), got {val_fraction}; "
            "pass e.g. 0.1 to hold out 10% of the train split, or 0 for none"
        )
    if train_size is not None and int(train_size) < 1:
        raise ValueError(f"train_size must be a positive integer, got {train_size}; omit it to use the default size")

    if key == "mnist1d":
        x_tr, y_tr, x_te, y_te = _load_mnist1d(train_size, data_seed, cache_dir)
        data = TensorData(x_tr, y_tr, x_te, y_te, num_classes=10, name=key, image=False)
    elif key == "text-topics":
        from .text import TOPICS, load_text
        data = TensorData(*load_text(train_size, data_seed), num_classes=TOPICS, name=key, image=False)
    elif DATASET_INPUTS[key] in ("segmentation", "detection"):
        from .dense.data import load_dense

        data = load_dense(key, data_dir=data_dir, train_size=train_size, data_seed=data_seed)
    else:
        f = read_fashion_mnist(data_dir) if key == "fashion-mnist" else read_cifar(key, data_dir)
        data = TensorData(
            f.x_train, f.y_train, f.x_test, f.y_test, num_classes=f.num_classes, name=key, image=True
        )

    gen = torch.Generator().manual_seed(int(seed))
    if train_size is not None and key not in ("mnist1d", "seg-shapes", "det-shapes", "text-topics"):  # generated
        data = _take_train_subset(data, int(train_size), gen)
    if val_fraction > 0.0:
        data = _split_val(data, val_fraction, gen)
    return data


def subset_classes(data: TensorData, classes: Sequence[int]) -> TensorData:
    """Keep only samples of ``classes`` and relabel them ``0..k-1`` in the given order."""
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("classes is empty; pass at least one class index, e.g. [0, 1]")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}; pass each class index once")
    bad = [c for c in classes if not 0 <= c < data.num_classes]
    if bad:
        raise ValueError(
            f"classes {bad} are out of range for {data.num_classes}-class data; "
            f"use indices in [0, {data.num_classes})"
        )
    # Lookup table old label -> new label (-1 = dropped); shape (num_classes,).
    table = torch.full((data.num_classes,), -1, dtype=torch.long)
    table[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))

    def pick(x: Optional[Tensor], y: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if x is None or y is None:
            return x, y
        new = table[y.long().cpu()].to(y.device)
        keep = new >= 0
        return x[keep], new[keep]

    x_tr, y_tr = pick(data.x_train, data.y_train)
    x_te, y_te = pick(data.x_test, data.y_test)
    x_va, y_va = pick(data.x_val, data.y_val)
    return replace(
        data,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        x_val=x_va,
        y_val=y_va,
        num_classes=len(classes),
        name=f"{data.name}[{','.join(map(str, classes))}]",
    )


def resize_images(x: Tensor, size: Union[int, Tuple[int, int]]) -> Tensor:
    """Resize ``(N, C, H, W)`` images to ``size`` (int or ``(H, W)``), bilinear, no antialias."""
    if x.dim() != 4:
        raise ValueError(f"resize_images expects (N, C, H, W) images, got shape {tuple(x.shape)}; add the missing dims")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise ValueError(f"size must be positive, got {size}; pass e.g. 32 or (32, 32)")
    if tuple(x.shape[-2:]) == hw:
        return x
    # interpolate needs a floating dtype; uint8 pixels round-trip through float32.
    src = x if x.is_floating_point() else x.float()
    out = F.interpolate(src, size=hw, mode="bilinear", align_corners=False, antialias=False)
    return out if x.is_floating_point() else out.round().clamp(0, 255).to(x.dtype)


def default_cache_dir() -> Path:
    """``$IES_CACHE_DIR`` if set, else ``~/.cache/ies``."""
    env = os.environ.get("IES_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ies"


# ----------------------------------------------------------------------------- mnist1d


def _load_mnist1d(
    train_size: Optional[int], data_seed: int, cache_dir: Optional[str]
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Generate (or read from cache) MNIST-1D: x (N, 40) float32, y (N,) int64."""
    import numpy as np
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # only used by the download path, which we never take
    n_train = 4000 if train_size is None else int(train_size)
    split = float(args["train_split"])
    # make_dataset draws num_samples // 10 per class, so round up to a multiple of 10;
    # any excess train sample is trimmed below (the test split is unaffected).
    num_samples = -(-int(round(n_train / split)) // 10) * 10
    while int(num_samples * split) < n_train:
        num_samples += 10
    args["num_samples"] = num_samples
    args["seed"] = int(data_seed)

    digest = hashlib.sha256(
        json.dumps({"v": _MNIST1D_CACHE_VERSION, **args}, sort_keys=True).encode()
    ).hexdigest()[:16]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = root / f"mnist1d-n{num_samples}-s{data_seed}-{digest}.npz"

    arrays: Optional[Dict[str, Any]] = None
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except Exception:  # corrupt or partial cache: regenerate below
            arrays = None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _atomic_savez(path, arrays)

    x_tr = torch.from_numpy(np.asarray(arrays["x"], dtype=np.float32))[:n_train]
    y_tr = torch.from_numpy(np.asarray(arrays["y"], dtype=np.int64))[:n_train]
    x_te = torch.from_numpy(np.asarray(arrays["x_test"], dtype=np.float32))
    y_te = torch.from_numpy(np.asarray(arrays["y_test"], dtype=np.int64))
    return x_tr.contiguous(), y_tr.contiguous(), x_te, y_te


def _generate_mnist1d(args: Dict[str, Any]) -> Dict[str, Any]:
    """Run ``mnist1d.data.make_dataset`` without leaking its global RNG seeding."""
    import random

    import numpy as np
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset seeds the global `random` and numpy RNGs; restore them afterwards so
    # generating data does not change the caller's random streams.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    # Already centred with unit std by make_dataset, so no further normalization.
    return {
        "x": np.asarray(d["x"], dtype=np.float32),
        "y": np.asarray(d["y"], dtype=np.int64),
        "x_test": np.asarray(d["x_test"], dtype=np.float32),
        "y_test": np.asarray(d["y_test"], dtype=np.int64),
    }


def _atomic_savez(path: Path, arrays: Dict[str, Any]) -> None:
    """Write ``arrays`` to ``path`` via a temp file + ``os.replace`` (no torn caches)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so numpy does not append ".npz"
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- splits


def _take_train_subset(data: TensorData, n: int, gen: torch.Generator) -> TensorData:
    """Seeded random subset of ``n`` training samples (first n of a permutation)."""
    total = len(data)
    if n > total:
        raise ValueError(
            f"train_size={n} exceeds the {total} training samples of {data.name}; "
            f"pass train_size <= {total} or omit it"
        )
    if n == total:
        return data
    idx = torch.randperm(total, generator=gen)[:n].sort().values  # keep original order
    return replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])


def _split_val(data: TensorData, fraction: float, gen: torch.Generator) -> TensorData:
    """Move a seeded ``fraction`` of the train split into ``x_val``/``y_val``."""
    total = len(data)
    n_val = int(round(total * fraction))
    if n_val < 1 or n_val >= total:
        raise ValueError(
            f"val_fraction={fraction} of {total} training samples gives {n_val} validation samples; "
            "use a larger train split or a larger val_fraction"
        )
    perm = torch.randperm(total, generator=gen)
    val_idx = perm[:n_val].sort().values
    tr_idx = perm[n_val:].sort().values
    return replace(
        data,
        x_train=data.x_train[tr_idx],
        y_train=data.y_train[tr_idx],
        x_val=data.x_train[val_idx],
        y_val=data.y_train[val_idx],
    )
