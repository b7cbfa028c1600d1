"""Checkpoint and resume: an interrupted run continues exactly as the uninterrupted one."""

from __future__ import annotations

import itertools
from typing import List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ies import IES, ActiveSampler, IndexedDataset

N, EPOCHS, BATCH = 96, 14, 8
THRESHOLD = 2e-3


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.1 * torch.randn(N, generator=g)
    return TensorDataset(x, y)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), y, reduction="none")


def build(init_seed: int = 0) -> Tuple[IES, nn.Module, torch.optim.Optimizer, DataLoader, TensorDataset]:
    torch.manual_seed(init_seed)
    ds = make_data()
    tr = IES(N, threshold=THRESHOLD)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    loader = DataLoader(IndexedDataset(ds), batch_size=BATCH, sampler=ActiveSampler(tr, seed=1))
    return tr, model, opt, loader, ds


def train(
    tr: IES, model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, ds: TensorDataset,
    log: List[List[int]], *, skip: int = 0, stop: Optional[Tuple[int, int]] = None,
) -> bool:
    """Train from the tracker's epoch, skipping ``skip`` batches of it (already done before
    a mid-epoch checkpoint); return True when stopped at ``stop = (epoch, batches done)``."""
    while tr.epoch < EPOCHS:
        for b, (idx, (x, y)) in enumerate(itertools.islice(loader, skip, None), start=skip):
            if stop is not None and (tr.epoch, b) == stop:
                return True
            model.train()
            loss = tr.record(idx, loss_fn(model(x), y)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        skip = 0
        if stop is not None and stop[1] == -1 and tr.epoch == stop[0]:
            return True  # stop at the end of the epoch, before the scoring pass
        tr.end_epoch(model, ds, loss_fn, batch_size=32)
        log.append(sorted(tr.excluded_indices().tolist()))
    return False


def save(path, tr: IES, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    torch.save({"ies": tr.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}, path)


def uninterrupted() -> Tuple[List[List[int]], nn.Module, IES]:
    tr, model, opt, loader, ds = build()
    log: List[List[int]] = []
    assert not train(tr, model, opt, loader, ds, log)
    return log, model, tr


@pytest.fixture(scope="module")
def reference():
    return uninterrupted()


def test_reference_run_excludes_and_reincludes(reference) -> None:
    log, model, tr = reference
    assert len(log) == EPOCHS
    assert max(len(x) for x in log) >= 10, "the threshold must actually exclude samples"
    assert sum(s.excluded for s in tr.history_log) > 0
    assert sum(s.reincluded for s in tr.history_log) > 0
    # and it is deterministic: a second run is identical
    log2, model2, _ = uninterrupted()
    assert log2 == log
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("stop", [(5, 0), (7, 0), (7, 3), (8, -1)], ids=["epoch5", "epoch7", "mid-epoch7", "before-scoring8"])
def test_resume_matches_uninterrupted(tmp_path, reference, stop) -> None:
    want_log, want_model, want_tr = reference
    tr, model, opt, loader, ds = build()
    log: List[List[int]] = []
    assert train(tr, model, opt, loader, ds, log, stop=stop)
    assert tr.epoch == stop[0]
    if stop[0] >= 7:
        assert tr.excluded.any(), "the checkpoint should be taken while samples are excluded"
    path = tmp_path / "ckpt.pt"
    save(path, tr, model, opt)
    del tr, model, opt, loader

    tr2, model2, opt2, loader2, ds2 = build(init_seed=12345)  # different init: all must come from the file
    ck = torch.load(path)
    tr2.load_state_dict(ck["ies"])
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert tr2.epoch == stop[0]
    skip = stop[1] if stop[1] > 0 else 0
    if stop[1] == -1:  # the epoch's batches were done: only the scoring pass and step remain
        tr2.end_epoch(model2, ds2, loss_fn, batch_size=32)
        log.append(sorted(tr2.excluded_indices().tolist()))
    assert not train(tr2, model2, opt2, loader2, ds2, log, skip=skip)
    assert log == want_log
    for p, q in zip(model2.parameters(), want_model.parameters()):
        assert torch.equal(p, q)
    assert [s.counts() for s in tr2.history_log] == [s.counts() for s in want_tr.history_log]
    assert tr2.books.total == want_tr.books.total
    for k in ("history", "count", "excluded", "times_excluded", "times_reincluded", "first_mastered"):
        assert torch.allclose(getattr(tr2, k).float(), getattr(want_tr, k).float(), equal_nan=True, rtol=0, atol=0), k


def test_state_dict_round_trip_mid_epoch(tmp_path) -> None:
    """Pending losses, which samples have one, and the epoch's counters survive a checkpoint."""
    n = 20
    traces = torch.linspace(0, 1, n).expand(8, n)  # a constant loss per sample
    a = IES(n, threshold=1e-2)
    for e in range(8):  # warm history: judged and excluded
        act = a.active_mask
        a.record(torch.arange(n)[act], traces[e][act])
        a.record_probe(torch.arange(n)[~act], traces[e][~act])  # excluded: probed, not trained
        a.step()
    assert a.excluded.all()
    a.excluded[:5] = False  # not reachable by the rule, but state is state
    a.num_active = n - int(a.excluded.sum())
    a.record(torch.tensor([3, 1]), torch.tensor([0.5, 0.25]), backpropagated=1)
    a.record_probe(torch.tensor([10, 12, 19]), torch.tensor([2.0, float("nan"), 3.0]))
    path = tmp_path / "ies.pt"
    torch.save(a.state_dict(), path)

    b = IES(n, threshold=1e-2)
    b.load_state_dict(torch.load(path))
    assert b.epoch == a.epoch == 8
    assert torch.equal(b.pending_mask, a.pending_mask)
    assert b.pending_mask.nonzero().flatten().tolist() == [1, 3, 10, 12, 19]
    assert torch.allclose(b.pending, a.pending, equal_nan=True)
    assert b.num_active == a.num_active == 5
    assert b.books.epoch == a.books.epoch == {"trained": 2, "backprop": 1, "forward_only": 1, "probed": 3}
    for t in (a, b):  # both finish the epoch the same way
        t.record(torch.tensor([0, 2, 4]), torch.tensor([1.0, 1.0, 1.0]))
    sa, sb = a.step(), b.step()
    assert sa.counts() == sb.counts()
    assert sa.trained == 5 and sa.backpropagated == 4 and sa.probed == 3 and sa.nonfinite == 1
    assert torch.equal(a.excluded, b.excluded)
    assert torch.allclose(a.history, b.history, equal_nan=True)
    assert [s.counts() for s in a.history_log] == [s.counts() for s in b.history_log]


def test_state_dict_is_a_copy() -> None:
    a = IES(4)
    sd = a.state_dict()
    a.record(torch.arange(4), torch.ones(4))
    assert not sd["train_records"].any()
    a.load_state_dict(sd)
    assert not a.pending_mask.any()
    sd["excluded"][0] = True
    assert not a.excluded[0]
