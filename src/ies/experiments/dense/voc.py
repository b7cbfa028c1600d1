"""PASCAL VOC readers (segmentation and detection), checked file by file.

The layout is the one the VOC devkit unpacks (``VOCdevkit/VOC2012/`` or ``VOC2007/``), given as
``root``::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette PNGs: 0 background, 1..20 classes, 255 borders/void
    Annotations/<id>.xml                one <object> per box: <name>, <difficult>, <bndbox>
    ImageSets/Segmentation/<split>.txt  ids, one per line
    ImageSets/Main/<split>.txt

Images are resized to ``size`` x ``size`` (bilinear; masks nearest, boxes scaled) so a split fits in
one tensor. Every problem is a ``ValueError`` (or ``FileNotFoundError``) naming the file and the fix:
an unreadable image, a mask of another size than its image or with labels outside 0..20 and 255, an
XML file that does not parse or names an unknown class or lacks a box coordinate. Pillow reads the
images (the ``cli`` extra).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import List, Tuple

import torch
from torch import Tensor

__all__ = ["VOC_CLASSES", "read_voc_segmentation", "read_voc_detection", "read_split"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading PASCAL VOC needs Pillow: pip install instance-early-stopping[cli]") from None
    return Image


def read_split(root: str, kind: str, split: str) -> List[str]:
    """The ids listed in ``ImageSets/<kind>/<split>.txt``."""
    path = Path(root) / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; --data-dir must be the VOC folder holding ImageSets/, "
                                "JPEGImages/ (e.g. VOCdevkit/VOC2012)")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path} lists no image; it should hold one image id per line")
    return ids


def _open(path: Path, mode: str = None):
    Image = _pil()
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (listed in the split file); restore it or remove its id")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # Pillow raises several kinds (UnidentifiedImageError, OSError, SyntaxError)
        raise ValueError(f"{path} is not a readable image ({e}); re-extract the dataset") from None
    return img.convert(mode) if mode else img


def _image_tensor(img, size: int) -> Tensor:
    import numpy as np

    arr = np.asarray(img.convert("RGB").resize((size, size), _pil().BILINEAR), dtype=np.float32)
    return torch.from_numpy(arr / 255.0).permute(2, 0, 1).contiguous()


def read_voc_segmentation(root: str, split: str, *, size: int = 128) -> Tuple[Tensor, Tensor]:
    """``(images (N, 3, size, size) float32 in [0, 1], masks (N, size, size) int64)`` of a segmentation split."""
    import numpy as np

    base = Path(root)
    xs, ys = [], []
    for i in read_split(root, "Segmentation", split):
        img = _open(base / "JPEGImages" / f"{i}.jpg")
        mpath = base / "SegmentationClass" / f"{i}.png"
        mask = _open(mpath)
        if mask.mode not in ("P", "L"):
            raise ValueError(f"{mpath} is a {mask.mode} image, not a palette (P) or grey (L) class map; use the "
                             "SegmentationClass PNGs, not SegmentationClassVisualization")
        if mask.size != img.size:
            raise ValueError(f"{mpath} is {mask.size[0]}x{mask.size[1]} but its image is {img.size[0]}x{img.size[1]}; "
                             "a mask must match its image pixel for pixel")
        arr = np.asarray(mask.resize((size, size), _pil().NEAREST), dtype=np.int64)
        bad = (arr > len(VOC_CLASSES)) & (arr != 255)
        if bad.any():
            raise ValueError(f"{mpath} holds label {int(arr[bad][0])}; VOC masks use 0..{len(VOC_CLASSES)} and 255")
        xs.append(_image_tensor(img, size))
        ys.append(torch.from_numpy(arr))
    return torch.stack(xs), torch.stack(ys)


def _box(obj: ET.Element, path: Path) -> List[float]:
    out = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        node = obj.find(f"bndbox/{tag}")
        try:
            out.append(float(node.text))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"{path}: an <object> has no numeric <bndbox><{tag}>; fix or remove that object") from None
    return out


def _annotation(path: Path) -> Tuple[Tuple[int, int], List[List[float]]]:
    """``((width, height), [[class, xmin, ymin, xmax, ymax, difficult], ...])`` from one VOC XML file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (listed in the split file); restore it or remove its id")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise ValueError(f"{path} is not valid XML ({e}); re-extract the annotations") from None
    root = tree.getroot()
    try:
        wh = (int(root.findtext("size/width")), int(root.findtext("size/height")))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path} has no numeric <size><width>/<height>; fix the file") from None
    objs = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise ValueError(f"{path}: unknown class {name!r}; VOC classes are {', '.join(VOC_CLASSES)}")
        difficult = int((obj.findtext("difficult") or "0").strip() or 0)
        objs.append([float(VOC_CLASSES.index(name)), *_box(obj, path), float(difficult)])
    return wh, objs


def read_voc_detection(root: str, split: str, *, size: int = 128) -> Tuple[Tensor, Tensor]:
    """``(images (N, 3, size, size), boxes (N, K, 6))`` of a detection split; boxes are class, x1, y1, x2, y2
    (pixels of the resized image; VOC's 1-based inclusive corners made 0-based half-open), difficult;
    K is the split's most objects in one image, class -1 pads."""
    base = Path(root)
    xs, boxes = [], []
    for i in read_split(root, "Main", split):
        apath = base / "Annotations" / f"{i}.xml"
        (w, h), objs = _annotation(apath)
        img = _open(base / "JPEGImages" / f"{i}.jpg")
        if img.size != (w, h):
            raise ValueError(f"{apath} says {w}x{h} but JPEGImages/{i}.jpg is {img.size[0]}x{img.size[1]}; fix the "
                             "annotation's <size>")
        sx, sy = size / w, size / h
        boxes.append([[c, (x1 - 1) * sx, (y1 - 1) * sy, x2 * sx, y2 * sy, d] for c, x1, y1, x2, y2, d in objs])
        xs.append(_image_tensor(img, size))
    k = max(1, max(len(b) for b in boxes))
    out = torch.zeros(len(boxes), k, 6)
    out[..., 0] = -1
    for n, b in enumerate(boxes):
        if b:
            out[n, : len(b)] = torch.tensor(b)
    return torch.stack(xs), out
