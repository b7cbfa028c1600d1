"""Mixed precision, gradient accumulation, step-based LR schedules and worker DataLoaders with IES."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ies import IndexedDataset, IES
from ies.training import (
    EpochProgressLR,
    is_accumulation_boundary,
    mixed_precision,
    split_micro_batches,
    steps_per_epoch,
)

N = 23
RULE = dict(threshold=0.5, order=0, window=1, m=1)  # mastered when the last loss < 0.5, from the 2nd loss on


def tracker_with_excluded(excluded_every: int = 3) -> IES:
    """A tracker after two epochs in which every ``excluded_every``-th sample had a low loss."""
    ies = IES(N, **RULE)
    idx = torch.arange(N)
    for _ in range(2):
        ies.record(idx, torch.where(idx % excluded_every == 0, 0.1, 1.0))
        ies.step()
    assert 0 < int(ies.excluded.sum()) < N
    return ies


def test_bf16_losses_are_recorded_as_float32():
    ies = IES(N)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    with mixed_precision("cpu"):
        logits = model(x)
        assert logits.dtype == torch.bfloat16
        bf16_losses = F.cross_entropy(logits, y, reduction="none").to(torch.bfloat16)
    out = ies.record(torch.arange(5), bf16_losses)
    assert out is bf16_losses  # returned unchanged, for backprop in the caller's dtype
    assert ies.pending.dtype == torch.float32
    assert torch.equal(ies.pending[:5], bf16_losses.float())  # the bf16 values, exactly, as float32
    ies.record(torch.tensor([7]), torch.tensor([1.0078125], dtype=torch.float16))
    assert ies.pending[7].item() == 1.0078125
    assert mixed_precision("cpu").fast_dtype == torch.bfloat16


def test_gradient_accumulation_records_each_sample_once():
    ies = tracker_with_excluded()
    active = int((~ies.excluded).sum())
    loader = DataLoader(IndexedDataset(TensorDataset(torch.randn(N, 2))), sampler=ies.sampler(seed=1), batch_size=4)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    accum, steps, calls = 3, 0, []
    for i, (idx, (x,)) in enumerate(loader):
        losses = ies.record(idx, model(x).squeeze(1).pow(2))  # every micro-batch recorded once
        calls.append(idx)
        (losses.mean() / accum).backward()
        if is_accumulation_boundary(i, accum, len(loader)):
            opt.step()
            opt.zero_grad()
            steps += 1
    assert steps == steps_per_epoch(loader.sampler, 4, accumulation_steps=accum) == -(-(-(-active // 4)) // accum)
    seen = torch.cat(calls)
    assert seen.numel() == active and seen.unique().numel() == active  # once each
    assert torch.equal(ies.pending_mask, ~ies.excluded)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())  # last short cycle stepped
    stats = ies.step()
    assert stats.trained == stats.backpropagated == active

    # Micro-batches cut from one big batch: the same, once per sample.
    ies2 = tracker_with_excluded()
    big = DataLoader(IndexedDataset(TensorDataset(torch.randn(N, 2))), sampler=ies2.sampler(), batch_size=16)
    for batch in big:
        parts = split_micro_batches(batch, 3)
        assert sum(p[0].numel() for p in parts) == batch[0].numel()
        for idx, (x,) in parts:
            ies2.record(idx, model(x).squeeze(1).pow(2))
    assert torch.equal(ies2.pending_mask, ~ies2.excluded)


def test_split_micro_batches_structures():
    batch = {"idx": torch.arange(5), "x": torch.randn(5, 2), "meta": "keep", "pair": (torch.arange(5), [torch.ones(5)])}
    parts = split_micro_batches(batch, 2)
    assert [p["idx"].tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert parts[1]["pair"][1][0].shape == (2,) and parts[0]["meta"] == "keep"
    assert len(split_micro_batches((torch.arange(2),), 5)) == 2
    with pytest.raises(ValueError, match="num_micro_batches"):
        split_micro_batches(batch, 0)
    with pytest.raises(ValueError, match="tensor"):
        split_micro_batches({"a": 1}, 2)


def test_steps_per_epoch_and_boundaries():
    assert steps_per_epoch(10, 4) == 3 and steps_per_epoch(10, 4, drop_last=True) == 2
    assert steps_per_epoch(10, 4, accumulation_steps=2) == 2 and steps_per_epoch(0, 4) == 0
    assert [is_accumulation_boundary(i, 2, 5) for i in range(5)] == [False, True, False, True, True]
    with pytest.raises(ValueError, match="batch_size"):
        steps_per_epoch(10, 0)


def test_linear_schedule_ends_at_its_final_lr_although_epochs_shrink():
    """Epochs shrink as IES excludes samples; the schedule still reaches its end at the last epoch's end."""
    epochs, bs, n = 4, 4, 40
    ies = IES(n, **RULE)
    sampler = ies.sampler()
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = EpochProgressLR(opt, lambda p: 1.0 - p, epochs, steps_in_epoch=lambda: steps_per_epoch(sampler, bs))
    planned = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)  # the step-based plan, for contrast
    naive = torch.optim.lr_scheduler.LambdaLR(planned, lambda s: 1.0 - s / (epochs * steps_per_epoch(n, bs)))
    lrs_at_epoch_end, steps = [], []
    idx_all = torch.arange(n)
    for e in range(epochs):
        k = 0
        for idx in DataLoader(list(iter(sampler)), batch_size=bs):
            opt.step()
            sched.step()
            planned.step()
            naive.step()
            k += 1
        steps.append(k)
        lrs_at_epoch_end.append(sched.get_last_lr()[0])
        losses, act = torch.where(idx_all < 10 * (e + 1), 0.1, 1.0), ies.active_mask  # more mastered each epoch
        ies.record(idx_all[act], losses[act])
        ies.record_probe(idx_all[~act], losses[~act])  # the excluded are probed, not trained
        ies.step()
    assert steps[0] > steps[-1]  # epochs did shrink
    assert lrs_at_epoch_end == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert naive.get_last_lr()[0] > 0.1  # the step-based plan stops short of its end

    # begin_epoch() instead of a callable, and a state_dict round trip mid-run.
    opt2 = torch.optim.SGD(model.parameters(), lr=2.0)
    s2 = EpochProgressLR(opt2, lambda p: 1.0 - p, 2)
    with pytest.raises(ValueError, match="begin_epoch"):
        opt2.step()
        s2.step()
    s2.begin_epoch(4, 0)
    for _ in range(2):
        opt2.step()
        s2.step()
    s3 = EpochProgressLR(torch.optim.SGD(model.parameters(), lr=2.0), lambda p: 1.0 - p, 2)
    s3.load_state_dict(s2.state_dict())
    assert s3.progress == s2.progress == 0.25 and "lr_lambdas" not in s2.state_dict()
    s2.begin_epoch(1, 1)
    opt2.step()
    s2.step()
    assert s2.get_last_lr()[0] == 0.0
    with pytest.raises(ValueError, match="total_epochs"):
        EpochProgressLR(opt2, lambda p: 1.0, 0)


def test_worker_dataloader_rereads_the_sampler_each_epoch():
    """num_workers > 0 with persistent_workers: each epoch yields that epoch's active set."""
    ies = IES(N, **RULE)
    loader = DataLoader(IndexedDataset(TensorDataset(torch.arange(N))), sampler=ies.sampler(), batch_size=5,
                        num_workers=1, persistent_workers=True)
    sizes, first_iterator = [], None
    for e in range(4):
        got = []
        for idx, (x,) in loader:
            assert torch.equal(idx, x)
            got.append(idx)
        first_iterator = first_iterator or loader._iterator
        got = torch.cat(got)
        assert sorted(got.tolist()) == ies.active_indices().tolist()
        sizes.append(got.numel())
        all_idx = torch.arange(N)
        losses, act = torch.where(all_idx < 6 * e, 0.1, 1.0), ies.active_mask  # more mastered each epoch
        ies.record(all_idx[act], losses[act])
        ies.record_probe(all_idx[~act], losses[~act])  # the excluded are probed, not trained
        ies.step()
    assert sizes == [N, N, N - 6, N - 12]
    assert loader._iterator is first_iterator  # the same persistent workers served every epoch


@pytest.mark.parametrize("module, framework, extra", [
    ("ies.integrations.lightning", "lightning.pytorch", "lightning"),
    ("ies.integrations.huggingface", "transformers", "huggingface"),
])
def test_missing_framework_names_the_extra(monkeypatch, module, framework, extra):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, framework, None)  # import of the framework now fails
    with pytest.raises(ImportError, match=rf"pip install instance-early-stopping\[{extra}\]"):
        importlib.import_module(module)
    import ies.integrations as integ

    with pytest.raises(AttributeError):
        integ.NoSuchThing
