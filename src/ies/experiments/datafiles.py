"""Readers of the file-based datasets, with every check that guards training from a bad file.

Formats:

* IDX (Fashion-MNIST): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each ``.gz`` or plain; unsigned-byte
  payloads only (:func:`read_idx`, :func:`read_fashion_mnist`).
* CIFAR-10 / CIFAR-100 "python version": pickled dicts of a ``(N, 3072)`` uint8 ``data`` array and a
  label list (``data_batch_1..5`` + ``test_batch``, or ``train`` + ``test``), plus an optional meta
  file (:func:`read_cifar`, :func:`load_pickle_restricted`).

Safety rules:

* Nothing is downloaded; a missing dataset raises ``FileNotFoundError`` saying where to get it.
* Only the files the format names are read, never every file in a folder.
* A corrupt or inconsistent file (bad gzip, truncated or mis-typed IDX, a pickle that is unreadable
  or holds anything but plain data and numpy arrays, missing keys, labels out of range,
  image/label count mismatch, wrong image size, pixels outside 0..255) raises one ``ValueError``
  naming the file and the fix, before any training starts.
* Pickles are read with a restricted unpickler that admits only numpy's array reconstructors,
  ``ndarray`` and ``dtype`` (and a latin-1-only ``_codecs.encode``): a crafted file cannot run code.

The readers return plain tensors (:class:`FileSplits`); ``ies.experiments.data`` wraps them in its
``TensorData``. This module must not import ``ies.experiments.data`` (no import cycle).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from .safepickle import CIFAR_URL as _CIFAR_URL
from .safepickle import load_pickle_restricted

__all__ = [
    "FileSplits",
    "read_idx",
    "read_fashion_mnist",
    "read_cifar",
    "load_pickle_restricted",
]

# Default locations of the file-based datasets (Debian-style packages install here).
_DEFAULT_DIRS: Dict[str, str] = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "cifar10": "/usr/share/datasets/cifar10",
    "cifar100": "/usr/share/datasets/cifar100",
}

# Fashion-MNIST statistics of the [0, 1]-scaled training pixels.
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530
# Per-channel statistics of the [0, 1]-scaled training images.
_CIFAR_STATS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class FileSplits(NamedTuple):
    """The official train/test splits of a file-based dataset, normalized.

    ``x_*`` are float32 ``(N, C, H, W)`` images, ``y_*`` int64 labels in ``[0, num_classes)``.
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int


# ----------------------------------------------------------------------------- idx


IDX_MAX_BYTES = 1 << 30  # the largest IDX payload read (Fashion-MNIST's biggest file holds 47 MB)
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand a stream by more than this (RFC 1951's longest match)


def _gz_error(path: Path, e: BaseException) -> ValueError:
    return ValueError(f"{path} is not a readable gzip file ({type(e).__name__}: {e}); the download is "
                      "corrupt or truncated, replace it with the original dataset file")


def _check_idx_magic(path: Path, head: bytes, expected_ndim: Optional[int]) -> int:
    if len(head) < 4:
        raise ValueError(f"{path} is too short to be an IDX file; re-extract or re-download it")
    # Magic: two zero bytes, a type code (0x08 = unsigned byte), and the number of dims.
    zero, dtype_code, ndim = struct.unpack(">HBB", head[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise ValueError(
            f"{path} has bad IDX magic {head[:4].hex()} (expected 0000 08 0N for unsigned bytes); "
            "the file is corrupt or not an IDX file, replace it with the original dataset file"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(
            f"{path} has {ndim} dims but {expected_ndim} were expected; "
            "check that image and label files are not swapped, or replace it with the original dataset file"
        )
    return ndim


def _check_idx_size(path: Path, shape: Tuple[int, ...], on_disk: int, gz: bool) -> int:
    """The payload the header declares, refused before reading if no real file could hold it."""
    count = 1
    for d in shape:
        count *= d
    if count > IDX_MAX_BYTES:
        raise ValueError(f"{path}'s header declares shape {tuple(shape)} = {count:,} bytes, over the "
                         f"{IDX_MAX_BYTES:,} ies reads; the header is corrupt, replace it with the original file")
    if gz and count > _DEFLATE_MAX_RATIO * on_disk + 1024:
        raise ValueError(f"{path}'s header declares {count:,} bytes but {on_disk:,} compressed bytes cannot hold "
                         "them; the file is corrupt, replace it with the original dataset file")
    return count


def read_idx(path: Union[str, Path], expected_ndim: Optional[int] = None) -> Tensor:
    """Parse an IDX file (optionally gzipped) of unsigned bytes into a uint8 tensor.

    Raises ``ValueError`` naming ``path`` for a corrupt gzip stream, a bad magic number, a
    header that ends early, or a payload that does not match the header's shape. The header
    is read first and the payload it declares is checked against the file's size (and, for
    gzip, what that many compressed bytes can expand to) before it is read, and no more than
    it is ever decompressed: a gzip bomb or a sparse file never reaches memory.
    """
    path = Path(path)
    st = path.stat()  # a missing/unreadable file raises its own OSError
    gz = path.suffix == ".gz"
    if not gz and st.st_size > (16 << 20) and st.st_blocks * 512 * 16 < st.st_size:
        raise ValueError(f"{path} is a sparse file ({st.st_size:,} bytes, {st.st_blocks * 512:,} on disk): mostly "
                         "holes, not a dataset; replace it with the original dataset file")
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        try:
            head = f.read(4)
            ndim = _check_idx_magic(path, head, expected_ndim)
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(
                    f"{path} ends inside its IDX header ({4 + len(dims)} of {4 + 4 * ndim} bytes); "
                    "the file is truncated, replace it with the original dataset file"
                )
            shape = struct.unpack(f">{ndim}I", dims)
            count = _check_idx_size(path, shape, st.st_size, gz)
            # the payload's size: from the file's size, or (gzip) by decompressing one byte more than declared
            raw = f.read(count + 1) if gz or st.st_size - 4 - 4 * ndim == count else b""
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise _gz_error(path, e) from None
    have = (len(raw) if len(raw) <= count else None) if gz else st.st_size - 4 - 4 * ndim
    if have != count:
        what = "truncated" if have is not None and have < count else "followed by extra bytes"
        raise ValueError(
            f"{path} holds {'more than ' + str(count) if have is None else have} bytes of data but its header says "
            f"{count} (shape {tuple(shape)}); the file is {what}, replace it with the original dataset file"
        )
    if count == 0:
        return torch.zeros(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(shape).clone()


# ----------------------------------------------------------------------------- fashion-mnist


def read_fashion_mnist(data_dir: Optional[str] = None) -> FileSplits:
    """Read and check the four Fashion-MNIST IDX files in ``data_dir`` (default: the Debian path)."""
    root = Path(data_dir or _DEFAULT_DIRS["fashion-mnist"]).expanduser()
    names = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    files: Dict[str, Path] = {}
    missing: List[str] = []
    for key, stem in names.items():
        found = next((root / n for n in (stem + ".gz", stem) if (root / n).is_file()), None)
        if found is None:
            missing.append(stem + "[.gz]")
        else:
            files[key] = found
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); "
            "run `apt-get install -y dataset-fashion-mnist` or pass --data-dir pointing at the IDX files"
        )

    fix = ("replace it with the original file (`apt-get install --reinstall dataset-fashion-mnist`) "
           "or pass --data-dir pointing at an intact copy")

    def split(x_key: str, y_key: str) -> Tuple[Tensor, Tensor]:
        xp, yp = files[x_key], files[y_key]
        x = read_idx(xp, expected_ndim=3)  # (N, 28, 28) uint8
        y = read_idx(yp, expected_ndim=1)  # (N,) uint8
        if tuple(x.shape[1:]) != (28, 28):
            raise ValueError(f"{xp} holds {x.shape[1]}x{x.shape[2]} images, Fashion-MNIST's are 28x28; {fix}")
        if x.shape[0] == 0:
            raise ValueError(f"{xp} holds no images; {fix}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{xp} holds {x.shape[0]} images but {yp} holds {y.shape[0]} labels; "
                f"the files do not belong together, {fix}"
            )
        bad = (y > 9).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(
                f"{yp} has label {int(y[i])} at index {i} ({bad.shape[0]} labels outside 0..9); "
                f"Fashion-MNIST has 10 classes, {fix}"
            )
        # (N, 28, 28) uint8 -> (N, 1, 28, 28) float32 in [0, 1] -> standardized.
        xf = x.unsqueeze(1).float().div_(255.0).sub_(_FASHION_MEAN).div_(_FASHION_STD)
        return xf, y.long()

    x_tr, y_tr = split("x_train", "y_train")
    x_te, y_te = split("x_test", "y_test")
    return FileSplits(x_tr, y_tr, x_te, y_te, num_classes=10)


# ----------------------------------------------------------------------------- cifar


def read_cifar(key: str, data_dir: Optional[str] = None) -> FileSplits:
    """Read and check CIFAR ``key`` (``"cifar10"`` or ``"cifar100"``) from its python-version pickles."""
    if key not in _CIFAR_STATS:
        raise ValueError(f"unknown CIFAR dataset {key!r}; pass 'cifar10' or 'cifar100'")
    folder = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if key == "cifar10" else ["train"]
    test_names = ["test_batch"] if key == "cifar10" else ["test"]
    label_key = b"labels" if key == "cifar10" else b"fine_labels"
    num_classes = 10 if key == "cifar10" else 100

    given = Path(data_dir or _DEFAULT_DIRS[key]).expanduser()
    # data_dir may be the extracted folder itself or its parent.
    root = None
    for cand in (given, given / folder):
        if all((cand / n).is_file() for n in train_names + test_names):
            root = cand
            break
    if root is None:
        raise FileNotFoundError(
            f"{key} not found at {given}: expected {folder}/ holding "
            f"{', '.join(train_names + test_names)} (the 'python version' pickles). "
            f"Download and extract it yourself from {_CIFAR_URL}, then pass --data-dir "
            f"pointing at {folder}/ or its parent"
        )

    fix = f"re-extract the 'python version' archive from {_CIFAR_URL}"
    # Only the files the format names are read (never every file in the folder); the meta file
    # is optional, but when present its label names must match the class count.
    meta_name, names_key = ("batches.meta", b"label_names") if key == "cifar10" else ("meta", b"fine_label_names")
    if (root / meta_name).is_file():
        meta = load_pickle_restricted(root / meta_name, max_bytes=1 << 20)
        if not isinstance(meta, dict):
            raise ValueError(f"{root / meta_name} holds a {type(meta).__name__}, not the {key} meta dict; {fix}")
        if names_key in meta and (not isinstance(meta[names_key], list) or len(meta[names_key]) != num_classes):
            got = len(meta[names_key]) if isinstance(meta[names_key], list) else type(meta[names_key]).__name__
            raise ValueError(
                f"{root / meta_name} lists {got} {names_key.decode()} but {key} has {num_classes} classes; "
                f"the folder mixes datasets, {fix}"
            )

    mean, std = _CIFAR_STATS[key]
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    def read(names: List[str]) -> Tuple[Tensor, Tensor]:
        xs, ys = [], []
        for n in names:
            x, y = _read_cifar_batch(root / n, key, label_key, num_classes, fix)
            xs.append(x)
            ys.append(y)
        x = torch.cat(xs).view(-1, 3, 32, 32).float().div_(255.0)  # rows are R(1024) G(1024) B(1024)
        return (x - mean_t) / std_t, torch.cat(ys)

    x_tr, y_tr = read(train_names)
    x_te, y_te = read(test_names)
    return FileSplits(x_tr, y_tr, x_te, y_te, num_classes=num_classes)


def _load_cifar_dict(path: Path, key: str, label_key: bytes, fix: str) -> Dict[Any, Any]:
    """The batch's dict, its file no bigger than the format's and its data and labels not nested lists."""
    import numpy as np

    # The format's size: 10,000 images a file (CIFAR-100's train: 50,000) of 3072 bytes, plus label and file name.
    images = 50_000 if (key, path.name) == ("cifar100", "train") else 10_000
    d = load_pickle_restricted(path, max_bytes=images * (3072 + 256) + (1 << 20))
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a {type(d).__name__}, not the dict of a {key} batch; {fix}")
    missing = [k for k in (b"data", label_key) if k not in d]
    if missing:
        raise ValueError(
            f"{path} lacks key(s) {', '.join(map(repr, missing))} (has {', '.join(map(repr, list(d)[:8]))}); "
            f"it is not a {key} python-version batch, {fix}"
        )
    # Nested lists are refused before numpy sees them: a few hundred bytes of pickle memo references
    # make a list of lists whose array would fill memory.
    if not isinstance(d[b"data"], np.ndarray):
        raise ValueError(f"{path} holds data that are not arrays (a {type(d[b'data']).__name__}, the format stores one "
                         f"numpy array); {fix}")
    if isinstance(d[label_key], list) and not all(isinstance(v, (int, float)) for v in d[label_key]):
        raise ValueError(f"{path} has {label_key.decode()} that are not a flat list of numbers; {fix}")
    return d


def _read_cifar_batch(path: Path, key: str, label_key: bytes, num_classes: int, fix: str) -> Tuple[Tensor, Tensor]:
    """One checked CIFAR batch: pixels ``(N, 3072)`` uint8 and labels ``(N,)`` int64."""
    import numpy as np

    d = _load_cifar_dict(path, key, label_key, fix)
    try:
        data = np.asarray(d[b"data"])
        labels = np.asarray(d[label_key])
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise ValueError(f"{path} holds data or labels that are not arrays ({e}); {fix}") from None
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path} has data of shape {tuple(data.shape)}, expected (N, 3072) = 3x32x32 images; "
            f"the file is not a {key} batch, {fix}"
        )
    n = data.shape[0]
    if n == 0:
        raise ValueError(f"{path} holds no images; {fix}")
    # Pixels must be integers that fit uint8: casting 300 would silently wrap it to 44.
    if data.dtype.kind not in "ui":
        raise ValueError(f"{path} has pixels of dtype {data.dtype}, expected uint8 integers in 0..255; {fix}")
    if data.dtype != np.uint8:
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{path} has pixel values in {lo}..{hi} (dtype {data.dtype}), outside 0..255; "
                f"they do not fit uint8, {fix}"
            )
        data = data.astype(np.uint8)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{path} has {n} images but {labels.shape[0] if labels.ndim == 1 else tuple(labels.shape)} "
            f"{label_key.decode()}; the counts must match, {fix}"
        )
    if labels.dtype.kind not in "ui":
        raise ValueError(f"{path} has {label_key.decode()} of dtype {labels.dtype}, expected integers; {fix}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path} has {label_key.decode()} {int(labels[i])} at index {i} ({bad.size} outside "
            f"0..{num_classes - 1}); {key} has {num_classes} classes, {fix}"
        )
    if not data.flags.writeable or not data.flags.c_contiguous:
        data = np.ascontiguousarray(data).copy()  # torch refuses to share read-only numpy memory
    return torch.from_numpy(data), torch.from_numpy(labels.astype(np.int64))
