"""PASCAL VOC readers on small files written in the VOC layout, including broken ones."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ies.experiments.data import load_dataset
from ies.experiments.dense.voc import VOC_CLASSES, read_voc_detection, read_voc_segmentation

XML = """<annotation><filename>{id}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{name}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
       "<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _voc(root: Path, ids=("a", "b"), size=(20, 10)) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    w, h = size
    for n, i in enumerate(ids):
        Image.fromarray(np.full((h, w, 3), 40 * n, dtype=np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[:, w // 2:] = 15 if n == 0 else 3  # person / bird on the right half
        mask[:, w // 2 - 1] = 255  # a void border
        pm = Image.fromarray(mask, mode="P")
        pm.putpalette([0, 0, 0] * 256)
        pm.save(root / "SegmentationClass" / f"{i}.png")
        objs = OBJ.format(name="person", d=0, x1=1, y1=1, x2=10, y2=5)
        if n == 1:
            objs += OBJ.format(name="dog", d=1, x1=11, y1=2, x2=20, y2=10)
        (root / "Annotations" / f"{i}.xml").write_text(XML.format(id=i, w=w, h=h, objects=objs))
    for sub in ("Segmentation", "Main"):
        for split in ("train", "val"):
            (root / "ImageSets" / sub / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_segmentation_reads_masks_resized_nearest(tmp_path):
    root = _voc(tmp_path)
    x, y = read_voc_segmentation(str(root), "train", size=8)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y.shape == (2, 8, 8) and y.dtype == torch.int64
    assert set(y[0].unique().tolist()) <= {0, 15, 255} and int(y[0, 0, -1]) == 15 and int(y[1, 0, -1]) == 3
    assert int(y[0, 0, 0]) == 0


def test_detection_reads_boxes_scaled_and_difficult(tmp_path):
    root = _voc(tmp_path)
    x, b = read_voc_detection(str(root), "val", size=40)  # 20x10 -> 40x40: x * 2, y * 4
    assert x.shape == (2, 3, 40, 40) and b.shape == (2, 2, 6)
    person = VOC_CLASSES.index("person")
    assert b[0, 0].tolist() == [person, 0.0, 0.0, 20.0, 20.0, 0.0]
    assert b[0, 1, 0] == -1  # padding
    assert b[1, 1].tolist() == [VOC_CLASSES.index("dog"), 20.0, 4.0, 40.0, 40.0, 1.0]


def test_wrong_size_mask_names_the_file(tmp_path):
    root = _voc(tmp_path)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8), mode="L").save(root / "SegmentationClass" / "b.png")
    with pytest.raises(ValueError, match=r"SegmentationClass/b\.png is 5x5 but its image is 20x10"):
        read_voc_segmentation(str(root), "train")


def test_rgb_mask_and_bad_labels_are_refused(tmp_path):
    root = _voc(tmp_path)
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(root / "SegmentationClass" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png is a RGB image"):
        read_voc_segmentation(str(root), "train")
    Image.fromarray(np.full((10, 20), 77, dtype=np.uint8), mode="L").save(root / "SegmentationClass" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png holds label 77"):
        read_voc_segmentation(str(root), "train")


def test_malformed_xml_names_the_file(tmp_path):
    root = _voc(tmp_path)
    (root / "Annotations" / "b.xml").write_text("<annotation><size><width>20</width>")
    with pytest.raises(ValueError, match=r"Annotations/b\.xml is not valid XML"):
        read_voc_detection(str(root), "train")


@pytest.mark.parametrize("objects, message", [
    (OBJ.format(name="unicorn", d=0, x1=1, y1=1, x2=2, y2=2), "unknown class 'unicorn'"),
    ("<object><name>dog</name><bndbox><xmin>1</xmin></bndbox></object>", r"an <object> has no numeric <bndbox><ymin>"),
])
def test_bad_objects_name_the_file(tmp_path, objects, message):
    root = _voc(tmp_path)
    (root / "Annotations" / "a.xml").write_text(XML.format(id="a", w=20, h=10, objects=objects))
    with pytest.raises(ValueError, match=r"a\.xml: " + message):
        read_voc_detection(str(root), "train")


def test_missing_files_say_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageSets/Segmentation/train.txt not found"):
        read_voc_segmentation(str(tmp_path), "train")
    root = _voc(tmp_path / "v")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages/b\.jpg not found"):
        read_voc_detection(str(root), "train")
    (root / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"b\.jpg is not a readable image"):
        read_voc_detection(str(root), "train")


def test_voc_datasets_load_with_their_task(tmp_path):
    root = _voc(tmp_path)
    seg = load_dataset("voc-seg", data_dir=str(root))
    det = load_dataset("voc-det", data_dir=str(root))
    assert seg.task == "segmentation" and seg.num_classes == 21 and seg.x_train.shape[-1] == 128
    assert det.task == "detection" and det.num_classes == 20 and det.y_test.shape == (2, 2, 6)
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        load_dataset("voc-seg")
