"""The README's integration diff is real code: apply it and run it on a tiny problem."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _diff_block() -> list:
    text = README.read_text()
    m = re.search(r"```diff\n(.*?)```", text, re.S)
    assert m, "README lost its integration diff"
    return m.group(1).splitlines()


def test_readme_diff_changes_at_most_five_lines_besides_the_import():
    lines = _diff_block()
    added = [ln for ln in lines if ln.startswith("+") and ln[1:].strip() != "import ies"]
    removed = [ln for ln in lines if ln.startswith("-")]
    assert max(len(added), len(removed)) <= 5, (added, removed)


def test_readme_diff_runs_and_trains_with_ies():
    after = "\n".join(ln[1:] for ln in _diff_block() if not ln.startswith("-"))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)  # learnable labels
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        initial = F.cross_entropy(model(x), y).item()
    scope = {
        "MyDataset": lambda: TensorDataset(x, y), "model": model, "epochs": 8, "F": F, "nn": nn,
        "DataLoader": DataLoader, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    exec(compile(after, str(README), "exec"), scope)
    tracker, stats = scope["tracker"], scope["stats"]
    assert stats.epoch == 7 and tracker.epoch == 8
    # Every sample was recorded every epoch (trained or scored): its history is full.
    assert int(tracker.state_dict()["count"].min()) == 8
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < initial - 0.05  # the loop really trained the model
