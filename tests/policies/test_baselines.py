"""Each baseline's own rule: Random Remove, InfoBatch, early stopping, Selective Backprop,
DIHCL and the EfficientTrain resolution curriculum."""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from torch import nn

from ies.experiments import models as models_mod
from ies.experiments.config import RunConfig
from ies.experiments.data import TensorData, load_dataset
from ies.experiments.engine import run_training
from ies.policies import build_policy
from ies.policies.infobatch import num_kept
from ies.policies.selective_backprop import LossHistory


def mnist1d_run(method: str, epochs: int, val_fraction: float = 0.0, **params):
    data = load_dataset("mnist1d", train_size=200, val_fraction=val_fraction)
    cfg = RunConfig(dataset="mnist1d", train_size=200, val_fraction=val_fraction, method=method,
                    method_params=params, epochs=epochs, batch_size=32, seed=0)
    return run_training(cfg, data)


def finish_epoch(p, losses: torch.Tensor) -> None:
    """Train the epoch's mask with the given per-sample losses and close it."""
    idx = torch.nonzero(p.train_mask()).flatten()
    p.record(idx, losses[idx])
    p.close_epoch()


# ----------------------------------------------------------------------------- random
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_random_removes_exact_fraction_seeded(fraction: float) -> None:
    n = 103
    rng_before = torch.random.get_rng_state()
    p = build_policy("random", n, total_epochs=5, seed=7, fraction=fraction)
    masks = []
    for _ in range(3):
        m = p.train_mask()
        assert torch.equal(m, p.train_mask())  # stable within an epoch
        assert int((~m).sum()) == round(fraction * n)
        masks.append(m)
        finish_epoch(p, torch.linspace(0.0, 1.0, n))
    assert not torch.equal(masks[0], masks[1])  # a fresh draw each epoch
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # a local generator only
    again = build_policy("random", n, total_epochs=5, seed=7, fraction=fraction)
    assert torch.equal(again.train_mask(), masks[0])
    other = build_policy("random", n, total_epochs=5, seed=8, fraction=fraction)
    assert not torch.equal(other.train_mask(), masks[0])
    k = round(fraction * n)
    assert p.books.total["trained"] == 3 * (n - k)
    assert p.summary()["backprop_saved"] == pytest.approx(1 - 3 * (n - k) / (5 * n))  # 2 planned epochs not run


# ----------------------------------------------------------------------------- infobatch
def test_infobatch_first_epoch_trains_all_then_prunes_only_below_mean() -> None:
    n, r = 100, 0.4
    p = build_policy("infobatch", n, total_epochs=10, seed=0, prune_ratio=r, delta=1.0)
    assert bool(p.train_mask().all())  # nothing seen yet: all count as high-loss
    losses = torch.linspace(0.0, 2.0, n)  # mean 1.0: samples 0..49 are below the mean
    finish_epoch(p, losses)
    mask = p.train_mask()
    below = losses < losses.mean()
    pruned = ~mask
    assert bool((pruned & ~below).sum() == 0)  # only below-mean samples are pruned
    assert int(pruned.sum()) == int(below.sum()) - num_kept(int(below.sum()), r)
    idx = torch.arange(n)
    w = p.batch_weights(idx)
    kept_low = below & mask
    assert torch.allclose(w[kept_low], torch.full((int(kept_low.sum()),), 1 / (1 - r)))
    assert torch.equal(w[~below], torch.ones(int((~below).sum())))


def test_infobatch_keeps_unseen_and_does_not_rescore_pruned() -> None:
    n = 60
    p = build_policy("infobatch", n, total_epochs=10, seed=1, prune_ratio=0.5, delta=1.0)
    first = torch.arange(30)  # only half the samples are trained in the first epoch
    p.record(first, torch.linspace(0.0, 1.0, 30))
    p.close_epoch()
    mask = p.train_mask()
    assert bool(mask[30:].all())  # never seen: kept
    pruned = torch.nonzero(~mask).flatten()
    assert pruned.numel() > 0
    old = p.scores[pruned].clone()
    finish_epoch(p, torch.full((n,), 5.0))
    assert torch.equal(p.scores[pruned], old)  # pruned samples keep their old loss
    assert bool((p.scores[mask] == 5.0).all())


def test_infobatch_anneals_to_full_data() -> None:
    T, n = 16, 50
    p = build_policy("infobatch", n, total_epochs=T, seed=0, prune_ratio=0.5)  # delta 0.875 -> epochs 14, 15 full
    pruned_by_epoch = []
    for e in range(T):
        m = p.train_mask()
        pruned_by_epoch.append(int((~m).sum()))
        if e >= 14:
            assert torch.equal(p.batch_weights(torch.arange(n)), torch.ones(n))
        finish_epoch(p, torch.rand(n, generator=torch.Generator().manual_seed(e)))
    assert pruned_by_epoch[0] == 0 and all(k > 0 for k in pruned_by_epoch[1:14])
    assert pruned_by_epoch[14:] == [0, 0]
    assert [p.pruning(e) for e in (13, 14)] == [True, False]


def test_infobatch_trains_and_rescales_in_engine() -> None:
    res = mnist1d_run("infobatch", 4, prune_ratio=0.5)
    assert 0.0 < res.summary["backprop_saved"] < 0.5
    assert res.epochs[0]["pruned"] == 0 and res.epochs[1]["pruned"] > 0


# ----------------------------------------------------------------------------- early stopping
def test_early_stop_stops_after_patience() -> None:
    p = build_policy("early-stop", 10, total_epochs=20, patience=3)

    def epoch(v: float) -> None:
        assert bool(p.train_mask().all())  # every sample trains while the run goes on
        p.record(torch.arange(10), torch.rand(10))
        p.close_epoch(val_accuracy=v)

    for v in [50.0, 60.0, 60.0, 59.0]:
        epoch(v)
        assert not p.stop_training
    epoch(58.0)  # third epoch without improvement over 60
    assert p.stop_training and p.best == 60.0 and p.best_epoch == 1
    s = p.summary()
    assert s["epochs_run"] == 5 and s["backprop_saved"] == pytest.approx(1 - 5 / 20)


def test_early_stop_min_delta() -> None:
    p = build_policy("early-stop", 10, total_epochs=20, patience=2, min_delta=1.0)
    for v in [50.0, 50.5, 50.9]:
        p.close_epoch(val_accuracy=v)
    assert p.stop_training  # +0.5 and +0.9 are not improvements of more than 1 point


def test_early_stop_without_validation_split_errors() -> None:
    p = build_policy("early-stop", 10, total_epochs=5)
    with pytest.raises(ValueError, match="--val-fraction"):
        p.close_epoch(val_accuracy=None)
    with pytest.raises(ValueError, match="--val-fraction"):
        mnist1d_run("early-stop", 3)


def test_early_stop_ends_the_run_and_counts_epochs_not_run() -> None:
    res = mnist1d_run("early-stop", 30, val_fraction=0.2, patience=1)
    s = res.summary
    assert s["epochs_run"] < 30 and len(res.epochs) == s["epochs_run"]
    assert s["backprop_saved"] == pytest.approx(1 - s["epochs_run"] / 30)
    assert "val_chosen_test_acc" in s


# ----------------------------------------------------------------------------- selective backprop
def test_selective_backprop_keep_probability_monotone_in_percentile() -> None:
    p = build_policy("selective-backprop", 10, total_epochs=2, beta=2.0, history_size=100)
    p.history.push(torch.arange(100, dtype=torch.float32))
    losses = torch.tensor([-1.0, 0.0, 10.0, 49.0, 50.0, 98.0, 99.0, 1000.0])
    prob = p.keep_probability(losses)
    assert bool((prob[1:] >= prob[:-1]).all())
    assert prob[0] == 0.0 and prob[-1] == 1.0 and prob[-2] == 1.0
    assert prob[4] == pytest.approx((51 / 100) ** 2)  # CDF = share of the history <= the loss
    q = build_policy("selective-backprop", 10, total_epochs=2, beta=1.0, history_size=100)
    q.history.push(torch.arange(100, dtype=torch.float32))
    assert bool((q.keep_probability(losses) >= prob).all())  # larger beta: more selective


def test_selective_backprop_history_is_a_fifo() -> None:
    h = LossHistory(5)
    h.push(torch.tensor([1.0, 2.0, 3.0]))
    h.push(torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sorted(h.values().tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    h.push(torch.arange(10, 20, dtype=torch.float32))
    assert sorted(h.values().tolist()) == [15.0, 16.0, 17.0, 18.0, 19.0]


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_selective_backprop_keeps_about_one_over_beta_plus_one(beta: float) -> None:
    p = build_policy("selective-backprop", 10_000, total_epochs=1, seed=0, beta=beta, history_size=1024)
    g = torch.Generator().manual_seed(0)
    kept = total = 0
    for _ in range(40):
        losses = torch.rand(128, generator=g)
        keep = p.select(torch.arange(128), losses)
        kept += int(keep.sum())
        total += 128
    assert kept / total == pytest.approx(1 / (beta + 1), abs=0.05)


def test_selective_backprop_counts_forward_only_and_saves_backward_only() -> None:
    res = mnist1d_run("selective-backprop", 2, beta=1.0)
    s, n = res.summary, 200
    assert s["samples_forward_only"] == n * 2  # every sample forwarded in the selection pass
    assert 0 < s["samples_backpropagated"] < n * 2
    assert s["compute_saved"] == pytest.approx(s["backprop_saved"] - (1 / 3))
    assert "backward" in s["saving_note"]


# ----------------------------------------------------------------------------- DIHCL
def test_dihcl_subset_size_schedule() -> None:
    n = 1000
    p = build_policy("dihcl", n, total_epochs=30, warm_epochs=3, decay=0.8, min_fraction=0.3)
    sizes = [p.subset_size(e) for e in range(10)]
    expect = [n, n, n] + [math.floor(n * max(0.3, 0.8 ** k)) for k in range(1, 8)]
    assert sizes == expect
    assert sizes[-1] == 300 and sizes == sorted(sizes, reverse=True)


def test_dihcl_samples_proportional_to_hardness_and_keeps_unselected_scores() -> None:
    n = 200
    p = build_policy("dihcl", n, total_epochs=10, seed=0, warm_epochs=1, decay=0.5, min_fraction=0.5, gamma=1.0)
    hard = torch.arange(n) < 50
    finish_epoch(p, torch.where(hard, torch.tensor(100.0), torch.tensor(0.01)))  # warm epoch: all trained
    mask = p.train_mask()
    assert int(mask.sum()) == 100
    assert bool(mask[hard].all())  # the 50 hard samples carry ~99.9% of the probability mass
    before = p.dih.clone()
    finish_epoch(p, torch.full((n,), 7.0))
    assert torch.equal(p.dih[~mask], before[~mask])  # unselected keep their hardness
    assert bool((p.dih[mask] == 7.0).all())


def test_dihcl_selection_is_seeded() -> None:
    def masks(seed: int) -> List[torch.Tensor]:
        p = build_policy("dihcl", 100, total_epochs=6, seed=seed, warm_epochs=1, decay=0.7)
        out = []
        for e in range(4):
            out.append(p.train_mask())
            finish_epoch(p, torch.rand(100, generator=torch.Generator().manual_seed(e)))
        return out

    a, b, c = masks(0), masks(0), masks(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_dihcl_loss_change_hardness() -> None:
    p = build_policy("dihcl", 4, total_epochs=5, hardness="loss-change", gamma=1.0, warm_epochs=5)
    finish_epoch(p, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    finish_epoch(p, torch.tensor([0.5, 2.0, 1.0, 4.5]))
    assert torch.allclose(p.dih, torch.tensor([0.5, 0.0, 2.0, 0.5]))


# ----------------------------------------------------------------------------- EfficientTrain
def test_efficient_train_resolution_schedule() -> None:
    p = build_policy("efficient-train", 10, total_epochs=10, b0=0.5, ramp_fraction=0.6)  # ramp over 6 epochs
    assert [round(p.resolution(e), 4) for e in range(10)] == [0.5, 0.5833, 0.6667, 0.75, 0.8333, 0.9167, 1, 1, 1, 1]
    assert [p.input_size(32, 32, e) for e in (0, 3, 6)] == [(16, 16), (24, 24), (32, 32)]
    x = torch.randn(4, 3, 32, 32)
    y = p.transform_inputs(x)
    assert y.shape == (4, 3, 16, 16)
    p.record(torch.arange(4), torch.rand(4))
    stats = p.close_epoch()
    assert stats["backpropagated"] == 4 and stats["backprop_equivalent"] == pytest.approx(4 * 0.25)
    assert p.summary()["backprop_saved"] == pytest.approx(1 - 1.0 / (10 * 10))
    k = build_policy("efficient-train", 10, total_epochs=10, keep_size=True)
    assert k.transform_inputs(x).shape == x.shape  # low-passed, back at full size: no saving counted
    k.record(torch.arange(4), torch.rand(4))
    assert k.close_epoch()["backprop_equivalent"] == 4


def test_efficient_train_refuses_non_image_inputs() -> None:
    p = build_policy("efficient-train", 10, total_epochs=4)
    with pytest.raises(ValueError, match="image"):
        p.transform_inputs(torch.randn(8, 40))
    with pytest.raises(ValueError, match="image"):
        mnist1d_run("efficient-train", 1)


def test_efficient_train_model_runs_on_smaller_inputs(monkeypatch) -> None:
    seen: List[tuple] = []

    class Pooled(nn.Module):
        def __init__(self, num_classes: int, in_channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                seen.append(tuple(x.shape[-2:]))
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    monkeypatch.setitem(models_mod.MODELS, "pooled-test-net",
                        lambda *, num_classes, in_channels, input_length, image_size: Pooled(num_classes, in_channels))
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(32, 1, 20, 20, generator=g), torch.randint(0, 10, (32,), generator=g),
                      torch.randn(8, 1, 20, 20, generator=g), torch.randint(0, 10, (8,), generator=g), image=True)
    cfg = RunConfig(dataset="fashion-mnist", model="pooled-test-net", method="efficient-train",
                    method_params={"b0": 0.5, "ramp_fraction": 0.5}, epochs=4, batch_size=16)
    res = run_training(cfg, data)
    assert sorted(set(seen)) == [(10, 10), (15, 15), (20, 20)]
    assert [r["input_size"] for r in res.epochs] == ["10x10", "15x15", "20x20", "20x20"]
    expect = 1 - (0.25 + 0.5625 + 1 + 1) / 4
    assert res.summary["backprop_saved"] == pytest.approx(expect)


def test_efficient_train_refuses_fixed_size_model_before_training() -> None:
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g),
                      torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g), image=True)
    cfg = RunConfig(dataset="fashion-mnist", model="mlp", method="efficient-train", epochs=2, batch_size=16)
    with pytest.raises(ValueError, match=r"efficient-train.*14x14.*keep_size=true"):
        run_training(cfg, data)
    # The default Fashion-MNIST model pools adaptively, so the curriculum runs on it.
    res = run_training(RunConfig(dataset="fashion-mnist", model="small-cnn", method="efficient-train",
                                 epochs=2, batch_size=16), data)
    assert res.epochs[0]["input_size"] == "14x14"


def test_composer_selective_backprop_saves_what_its_schedule_says():
    """Composer's defaults (keep 0.5 on every 2nd batch, 50-90% of the run) save 10% of backprop,
    the figure docs/methods.md quotes against ~50% for selective-backprop at beta=1."""
    p = build_policy("selective-backprop-composer", 64, total_epochs=10)
    for _ in range(10):
        for b in range(8):  # 8 batches of 8 per epoch
            idx = torch.arange(8 * b, 8 * b + 8)
            losses = torch.rand(8)
            if not p.selects_next_batch():  # as the engine does: no selection pass, the batch trains in full
                p.record(idx, losses)
                continue
            keep = p.select(idx, losses)  # a selected batch keeps its 4 biggest losses
            assert int(keep.sum()) == 4 and set(losses[keep].tolist()) == set(losses.topk(4).values.tolist())
            p.record(idx, losses, backpropagated=4, forward_only=8)
        p.close_epoch()
    s = p.summary()
    assert s["backprop_saved"] == pytest.approx(0.4 * 0.5 * 0.5)
    sb = build_policy("selective-backprop", 10_000, total_epochs=1, seed=0, beta=1.0, history_size=1024)
    kept = sum(int(sb.select(torch.arange(i, i + 100), torch.rand(100)).sum()) for i in range(0, 10_000, 100))
    assert kept / 10_000 == pytest.approx(0.5, abs=0.02)  # ours at the same keep share: about half saved


def test_composer_selective_backprop_in_the_engine_counts_every_batch():
    """Unselected batches train in full and are recorded; selected ones are forwarded twice."""
    res = mnist1d_run("selective-backprop-composer", 2, keep=0.5, start=0.0, end=1.0, interval=2)
    s = res.summary
    n, batches = 200, math.ceil(200 / 32)
    trained = sum(r["backpropagated"] for r in res.epochs)
    selected = sum(math.ceil(batches / 2) for _ in res.epochs)  # the first of every 2 batches, each epoch
    assert 0 < s["backprop_saved"] < 0.5 and trained < n * 2
    assert sum(r["forward_only"] for r in res.epochs) <= selected * 32
