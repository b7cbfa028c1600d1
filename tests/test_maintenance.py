"""The maintainer's list from issue 22: each fix that involves behaviour, tested."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ies import IES, IESWarning, IndexedDataset

SRC = Path(__file__).resolve().parents[1] / "src" / "ies"


def _module_level_imports(path: Path):
    """The core modules a module imports when it is loaded (not under TYPE_CHECKING, not inside functions)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.ImportFrom) and sub.level == 1 and sub.module:
                out.add(sub.module.split(".")[0])
            elif isinstance(sub, ast.ImportFrom) and sub.level == 1:
                out.update(a.name for a in sub.names)
    return out


def test_the_core_has_no_import_cycle():
    """sampler -> tracker -> sampler (for a type hint and IESWarning) was one; none may come back."""
    graph = {p.stem: _module_level_imports(p) & {q.stem for q in SRC.glob("*.py")} for p in SRC.glob("*.py")
             if p.stem != "__init__"}
    state = {}

    def visit(mod, path):
        if state.get(mod) == "done":
            return
        assert state.get(mod) != "open", f"import cycle: {' -> '.join(path + [mod])}"
        state[mod] = "open"
        for dep in sorted(graph.get(mod, ())):
            visit(dep, path + [mod])
        state[mod] = "done"

    for mod in sorted(graph):
        visit(mod, [])
    assert "tracker" not in graph["sampler"] and "ieswarning" in graph["sampler"]


def test_a_second_pass_without_end_epoch_warns_through_the_public_counter():
    data = TensorDataset(torch.randn(32, 2), torch.zeros(32, dtype=torch.long))
    tracker = IES(32)
    loader = DataLoader(IndexedDataset(data), sampler=tracker.sampler(), batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IESWarning)
        for idx, _ in loader:
            tracker.record(idx, torch.rand(idx.shape[0]))
    assert tracker.trained_in_epoch == 32
    with pytest.warns(IESWarning, match="a new pass over the IES sampler started in epoch 0 after 32 samples"):
        next(iter(loader))
    tracker.step()
    assert tracker.trained_in_epoch == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", IESWarning)
        next(iter(loader))  # a new epoch: no warning


def test_evaluation_restores_train_mode_when_a_forward_raises():
    """engine evaluation (experiments.tasks.per_sample_losses / evaluate) had no try/finally."""
    from ies.experiments.tasks import evaluate

    class Breaks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.calls = torch.nn.Linear(2, 3), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("out of memory")
            return self.lin(x)

    model = Breaks().train()
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(model, torch.randn(8, 2), torch.zeros(8, dtype=torch.long), batch_size=4)
    assert model.training  # not left in eval mode
    model.calls = 10
    loss, acc = evaluate(model, torch.randn(8, 2), torch.zeros(8, dtype=torch.long), batch_size=4)
    assert model.training and 0.0 <= acc <= 100.0


@pytest.mark.parametrize("value, ok", [(3, True), (0, False), (True, False), (2.0, False), ("3", False)])
def test_policies_check_ints_as_the_config_does(value, ok):
    """check_int was a copy of config._integer; it is that check now, message included."""
    from ies.config import _integer
    from ies.policies.random_remove import check_int

    if ok:
        assert check_int("history_size", value, low=1) == _integer("history_size", value, 1, "") == value
        return
    with pytest.raises(ValueError) as mine:
        check_int("history_size", value, low=1, hint=" (e.g. 1024)")
    with pytest.raises(ValueError) as theirs:
        _integer("history_size", value, 1, " (e.g. 1024)")
    assert str(mine.value) == str(theirs.value) and "history_size must be an int >= 1 (e.g. 1024)" in str(mine.value)


def test_the_saved_excluded_total_is_read_by_the_summary():
    """Accounting.total["excluded"] was saved and never read: the run summary reports it, and it survives a resume."""
    tracker = IES(16, threshold=0.5, order=0, window=1, m=1, probe_backoff=False)
    for e in range(4):
        act = tracker.active_mask
        idx = torch.arange(16)
        loss = torch.where(idx < 4 * e, torch.tensor(0.1), torch.tensor(1.0))
        tracker.record(idx[act], loss[act])
        tracker.record_probe(idx[~act], loss[~act])
        tracker.step()
    excluded = sum(s.excluded for s in tracker.history_log)
    assert excluded > 0 and tracker.books.summary(4)["sample_epochs_excluded"] == excluded
    again = IES(16, threshold=0.5, order=0, window=1, m=1, probe_backoff=False)
    again.load_state_dict(tracker.state_dict())
    assert again.books.summary(4)["sample_epochs_excluded"] == excluded
