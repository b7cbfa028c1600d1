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
