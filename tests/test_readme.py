"""The README's integration diff is real code: apply it and run it on a tiny problem."""

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

README = Path(__file__).resolve().parents[1] / "README.md"


def _counting(recorded: list):
    """The ``ies`` module, with IES.record counting the samples each call trains."""
    import types

    import ies

    class Counting(ies.IES):
        def record(self, idx, losses, **kw):
            recorded.append(int(idx.numel()))
            return super().record(idx, losses, **kw)

    return types.SimpleNamespace(**{**{k: getattr(ies, k) for k in ies.__all__}, "IES": Counting})


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
        "MyDataset": lambda: TensorDataset(x, y), "model": model, "epochs": 20, "F": F, "nn": nn,
        "DataLoader": DataLoader, "opt": torch.optim.SGD(model.parameters(), lr=0.1),
    }
    recorded: list = []
    assert "import ies" in after.splitlines()
    scope["ies"] = _counting(recorded)  # the README's own `import ies`, with IES.record counted
    exec(compile(after.replace("import ies\n", "", 1), str(README), "exec"), scope)
    tracker, stats = scope["tracker"], scope["stats"]
    assert stats.epoch == 19 and tracker.epoch == 20
    # The saving it reports is what the loop did: 1 - samples trained / (N * epochs), counted by hand.
    hand = 1 - sum(recorded) / (96 * 20)
    assert stats.backprop_saved == pytest.approx(hand)
    if tracker.config.target_saving is not None:  # the README asks for a target: met
        assert hand == pytest.approx(tracker.config.target_saving, abs=0.02)
    with torch.no_grad():
        assert F.cross_entropy(model(x), y).item() < initial - 0.05  # the loop really trained the model
