"""The dense datasets of the ``ies`` command, as :class:`~ies.experiments.data.TensorData`.

* ``seg-shapes`` / ``det-shapes``: generated from ``data_seed`` (:mod:`.synthetic`); ``train_size``
  sets how many training images are generated (default 1000; 300 test images).
* ``voc-seg`` / ``voc-det``: PASCAL VOC read from ``--data-dir`` (:mod:`.voc`), train split
  ``train`` and test split ``val``, resized to :data:`VOC_SIZE` square in memory.
"""

from __future__ import annotations

from typing import Optional

from ..data import TensorData
from .synthetic import SHAPE_CLASSES, detection_shapes, segmentation_shapes
from .tasks import DENSE_DATASETS

__all__ = ["load_dense", "VOC_SIZE", "SYNTHETIC_TEST_SIZE"]

VOC_SIZE = 128  # VOC images are ~500x375; in memory on a CPU they are resized to 128x128
SYNTHETIC_TEST_SIZE = 300


def load_dense(name: str, *, data_dir: Optional[str], train_size: Optional[int], data_seed: int) -> TensorData:
    """Dataset ``name`` (a key of :data:`DENSE_DATASETS`) with its task set."""
    task = DENSE_DATASETS[name]
    if name in ("seg-shapes", "det-shapes"):
        n = 1000 if train_size is None else int(train_size)
        make = segmentation_shapes if name == "seg-shapes" else detection_shapes
        xtr, ytr, xte, yte = make(n, SYNTHETIC_TEST_SIZE, seed=data_seed)
        classes = len(SHAPE_CLASSES) if task == "segmentation" else len(SHAPE_CLASSES) - 1
        return TensorData(xtr, ytr, xte, yte, num_classes=classes, name=name, image=True, task=task)
    from .voc import VOC_CLASSES, read_voc_detection, read_voc_segmentation

    if data_dir is None:
        raise FileNotFoundError(f"{name} reads PASCAL VOC from --data-dir (the VOC2012 or VOC2007 folder holding "
                                "JPEGImages/); download it from http://host.robots.ox.ac.uk/pascal/VOC/")
    read = read_voc_segmentation if task == "segmentation" else read_voc_detection
    xtr, ytr = read(data_dir, "train", size=VOC_SIZE)
    xte, yte = read(data_dir, "val", size=VOC_SIZE)
    classes = len(VOC_CLASSES) + 1 if task == "segmentation" else len(VOC_CLASSES)
    return TensorData(xtr, ytr, xte, yte, num_classes=classes, name=name, image=True, task=task)
