"""`ies compare --task segmentation|detection` end to end on tiny runs, resume, and the Table 5 summary."""

import json

import pytest

from ies.cli import main
from ies.experiments.dense.table5 import batches_saved, main as table5_main, table5_rows

TINY = ["--train-size", "12", "--epochs", "2", "--batch-size", "8", "--seeds", "1", "--quiet"]


@pytest.mark.parametrize("task, metric", [("segmentation", "mIoU"), ("detection", "mAP50")])
def test_compare_task_writes_the_report_and_resumes(tmp_path, task, metric, capsys):
    out = tmp_path / "o"
    assert main(["compare", "--task", task, *TINY, "--methods", "none,random:fraction=0.5", "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert f"final test {metric} (%)" in summary
    assert (out / "test_accuracy.png").stat().st_size > 0
    cfg = json.loads((out / "runs" / "none-seed0" / "config.json").read_text())["config"]
    assert cfg["dataset"] == {"segmentation": "seg-shapes", "detection": "det-shapes"}[task]
    before = json.loads((out / "comparison.json").read_text())["rows"]
    assert main(["compare", "--task", task, *TINY, "--methods", "none,random:fraction=0.5", "--resume", str(out)]) == 0
    after = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["final_test_acc_mean"] for r in after] == [r["final_test_acc_mean"] for r in before]
    capsys.readouterr()
    assert table5_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"best {metric} (%)" in printed and "random(fraction=0.5)" in printed
    rows = {r["label"]: r for r in table5_rows([str(out)])}
    assert rows["none"]["batches_saved"] == 0.0 and rows["random(fraction=0.5)"]["samples_saved"] > 0.3


def test_task_and_dataset_must_agree(capsys):
    assert main(["compare", "--task", "detection", "--dataset", "seg-shapes", "--quiet"]) == 2
    assert "is not a detection dataset" in capsys.readouterr().err


def test_batches_saved_counts_the_batches_not_formed():
    rows = [{"backpropagated": 100}, {"backpropagated": 33}, {"backpropagated": 0}]
    # 100 samples in batches of 32: 4 batches per full epoch; the epochs ran 4, 2 and 0
    assert batches_saved(rows, 100, 32) == pytest.approx(1 - 6 / 12)
