"""Dense engine: generators, models, metrics against libraries, losses per image, and resume."""

import io

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import jaccard_score

from ies.experiments.config import RunConfig
from ies.experiments.data import TensorData
from ies.experiments.dense.metrics import coco_map, confusion_matrix, miou
from ies.experiments.dense.models import STRIDE, CenterNetMini, DeepLabMini
from ies.experiments.dense.synthetic import detection_shapes, render_shapes, segmentation_shapes
from ies.experiments.dense.tasks import DetectionTask, SegmentationTask, centernet_decode, centernet_losses
from ies.experiments.engine import run_training


def test_generators_are_deterministic_per_seed():
    for make in (segmentation_shapes, detection_shapes):
        a, b = make(6, 3, seed=5), make(6, 3, seed=5)
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        c = make(6, 3, seed=6)
        assert not torch.equal(a[0], c[0])
        assert not torch.equal(a[0], a[2][:3].repeat(2, 1, 1, 1))  # train and test are different draws


def test_masks_and_boxes_are_exact():
    img, labels, boxes = render_shapes(20, 32, 3, 6, 16, torch.Generator().manual_seed(0))
    for i in range(20):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        for c, x1, y1, x2, y2, _ in boxes[i].tolist():
            if c < 0:
                continue
            inside[int(y1):int(y2), int(x1):int(x2)] = True
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
        assert bool((labels[i] > 0).any())
        assert not bool(((labels[i] > 0) & ~inside).any()), "a labelled pixel outside every box"
    _, y, _, _ = segmentation_shapes(4, 1, seed=0)
    assert set(y.unique().tolist()) <= {0, 1, 2, 3, 255} and bool((y == 255).any())


def test_miou_matches_scikit_learn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 10, 10), generator=g)
    pred = torch.where(torch.rand(3, 10, 10, generator=g) < 0.7, target, torch.randint(0, 4, (3, 10, 10), generator=g))
    target[0, :3] = 255
    conf = confusion_matrix(pred, target, 4, 255)
    keep = target != 255
    want = sk_confusion(target[keep].numpy(), pred[keep].numpy(), labels=[0, 1, 2, 3])
    assert conf.tolist() == want.tolist()
    m, per_class = miou(conf)
    sk = jaccard_score(target[keep].numpy(), pred[keep].numpy(), labels=[0, 1, 2, 3], average=None)
    assert torch.allclose(per_class, torch.as_tensor(sk, dtype=torch.float64))
    assert abs(m - float(sk.mean())) < 1e-12


def _perfect_output(boxes, num_classes, size):
    """The CenterNet output that encodes ``boxes`` exactly (heat logit +8 at centres, -8 elsewhere)."""
    h = w = size // STRIDE
    out = torch.full((boxes.shape[0], num_classes + 4, h, w), -8.0)
    for i in range(boxes.shape[0]):
        for c, x1, y1, x2, y2, _ in boxes[i].tolist():
            if c < 0:
                continue
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            ix, iy = int(cx), int(cy)
            out[i, int(c), iy, ix] = 8.0
            out[i, num_classes:, iy, ix] = torch.tensor([(x2 - x1) / STRIDE, (y2 - y1) / STRIDE, cx - ix, cy - iy])
    return out


def test_decode_and_pycocotools_map_of_a_perfect_and_a_shifted_detector():
    boxes = torch.tensor([[[0, 2, 3, 12, 11, 0], [2, 16, 18, 30, 31, 0], [-1, 0, 0, 0, 0, 0]],
                          [[1, 5, 5, 11, 13, 0], [1, 20, 4, 29, 10, 0], [0, 8, 20, 17, 28, 1]],  # a difficult one
                          [[2, 0, 0, 32, 32, 0], [-1, 0, 0, 0, 0, 0], [-1, 0, 0, 0, 0, 0]]], dtype=torch.float32)
    out = _perfect_output(boxes, 3, 32)  # (two objects of one class centred in one 4x4 cell would be one peak)
    dets = centernet_decode(out, 3)
    assert coco_map(dets, boxes, (32, 32), 3)["ap50"] == pytest.approx(1.0)
    shifted = [(i, c, s, [b[0] + 6, b[1] + 6, b[2] + 6, b[3] + 6]) for i, c, s, b in dets]
    assert coco_map(shifted, boxes, (32, 32), 3)["ap50"] < 0.5
    assert coco_map([], boxes, (32, 32), 3) == {"ap50": 0.0, "ap": 0.0}


def test_detection_and_segmentation_losses_are_per_image():
    """A batch's per-image losses equal each image's loss alone (the scatter-mean against a loop)."""
    torch.manual_seed(0)
    _, _, x, boxes = detection_shapes(1, 5, seed=1)
    boxes[2] = torch.tensor([-1.0, 0, 0, 0, 0, 0])  # an image with no object: a finite, defined loss
    model = CenterNetMini(3).eval()
    out = model(x)
    batch = centernet_losses(out, boxes, 3)
    alone = torch.cat([centernet_losses(out[i:i + 1], boxes[i:i + 1], 3) for i in range(5)])
    assert torch.allclose(batch, alone) and torch.isfinite(batch).all()
    assert float(centernet_losses(_perfect_output(boxes, 3, 32), boxes, 3).max()) < 0.01
    _, _, xs, ys = segmentation_shapes(1, 4, seed=1)
    seg = SegmentationTask(4)
    logits = DeepLabMini(4).eval()(xs)
    assert logits.shape == (4, 4, 32, 32)
    assert torch.allclose(seg.losses(logits, ys), torch.cat([seg.losses(logits[i:i + 1], ys[i:i + 1])
                                                              for i in range(4)]))


def _data(task):
    make, classes = (segmentation_shapes, 4) if task == "segmentation" else (detection_shapes, 3)
    xtr, ytr, xte, yte = make(24, 8, seed=0)
    return TensorData(xtr, ytr, xte, yte, num_classes=classes, name="tiny", image=True, task=task)


@pytest.mark.parametrize("task, dataset", [("segmentation", "seg-shapes"), ("detection", "det-shapes")])
def test_resume_of_a_dense_run_equals_an_uninterrupted_one(task, dataset):
    data = _data(task)
    cfg = RunConfig(dataset=dataset, method="ies", method_params={"threshold": 10.0}, epochs=8, batch_size=8,
                    score_batch_size=16, eval_batch_size=16)
    states = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        states.append(buf.getvalue())

    full = run_training(cfg, data, on_checkpoint=keep, keep_model=True)
    assert sum(r["excluded"] for r in full.epochs) > 0 and sum(r["probed"] for r in full.epochs) > 0
    assert all(0 <= r["test_acc"] <= 100 for r in full.epochs)
    resumed = run_training(cfg, data, resume=torch.load(io.BytesIO(states[5]), weights_only=False), keep_model=True)
    timing = ("seconds", "probe_share")
    strip = [{k: v for k, v in r.items() if not any(t in k for t in timing)} for r in resumed.epochs]
    assert strip == [{k: v for k, v in r.items() if not any(t in k for t in timing)} for r in full.epochs]
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_augment_is_refused_for_dense_data():
    with pytest.raises(ValueError, match="drop --augment"):
        run_training(RunConfig(dataset="seg-shapes", method="none", epochs=1, augment=True), _data("segmentation"))


def test_detection_task_evaluates_map_in_percent():
    data = _data("detection")
    task = DetectionTask(3)
    loss, ap = task.evaluate(CenterNetMini(3), data.x_test, data.y_test, 4)
    assert loss > 0 and 0.0 <= ap <= 100.0
