"""Careless uses are caught and the numbers reported are the numbers that happened (issue 14),
and bad state or sizes change nothing (issue 12's library part)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ies import IES, IESWarning, IndexedDataset

N = 64


def dataset(n: int = N) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.zeros(n))


class Plateau(nn.Module):
    """Per-sample loss = 1 + x/1000 whatever the epoch: everything is mastered after six losses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.0 + x[:, 0] / 1000


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out + 0 * y


def train(tracker: IES, loader: DataLoader, epochs: int, *, probe: bool = True) -> int:
    """A plain loop; returns the number of samples the loader actually yielded for training."""
    model, yielded = Plateau(), 0
    for _ in range(epochs):
        for idx, (x, y) in loader:
            tracker.record(idx, loss_fn(model(x), y))
            yielded += idx.numel()
        if probe:
            tracker.end_epoch(model, dataset(tracker.num_samples), loss_fn)
        else:
            tracker.step()
    return yielded


def messages(record) -> str:
    return " | ".join(str(w.message) for w in record if issubclass(w.category, IESWarning))


def test_a_loader_without_the_sampler_is_reported_and_counted_as_trained() -> None:
    tr = IES(N)
    loader = DataLoader(IndexedDataset(dataset()), batch_size=16, shuffle=True)  # bypasses tr.sampler()
    with pytest.warns(IESWarning, match=r"trained while excluded.*tracker\.sampler\(\)"):
        yielded = train(tr, loader, 10)
    assert yielded == 10 * N
    assert tr.history_log[-1].backprop_saved == 0.0  # everything was trained: nothing saved
    assert tr.history_log[-1].trained_while_excluded == N


@pytest.mark.parametrize("batch", [16, 24])
def test_reported_saving_equals_the_loaders_batches(batch: int) -> None:
    """drop_last=True drops a tail each epoch: those samples are probed, and the saving is counted
    from what the loader yielded, not from the excluded set."""
    tr = IES(N, threshold=1e-3)
    loader = DataLoader(IndexedDataset(dataset()), batch_size=batch, sampler=tr.sampler(), drop_last=True)
    epochs = 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IESWarning)
        yielded = train(tr, loader, epochs)
    assert tr.history_log[-1].backprop_saved == pytest.approx(1 - yielded / (N * epochs))
    assert sum(s.unrecorded for s in tr.history_log) == N * epochs - yielded - sum(s.excluded for s in tr.history_log)


def test_a_loader_that_yields_nothing_while_samples_are_active_warns_with_the_fix() -> None:
    tr = IES(N)
    loader = DataLoader(IndexedDataset(dataset()), batch_size=N + 1, sampler=tr.sampler(), drop_last=True)
    with pytest.warns(IESWarning, match=r"no training loss was recorded.*drop_last=False"):
        train(tr, loader, 7)
    # untrained active samples were probed, so they are judged anyway: all mastered and excluded
    assert all(s.unrecorded == s.active for s in tr.history_log)
    assert tr.excluded.all()


def test_end_epoch_twice_warns() -> None:
    tr = IES(N)
    loader = DataLoader(IndexedDataset(dataset()), batch_size=16, sampler=tr.sampler())
    train(tr, loader, 1)
    with pytest.warns(IESWarning, match=r"called twice with no training in between"):
        tr.end_epoch(Plateau(), dataset(), loss_fn)


def test_a_sample_recorded_twice_in_one_epoch_warns() -> None:
    tr = IES(N)
    tr.record(torch.arange(8), torch.ones(8))
    tr.record(torch.arange(4), torch.ones(4))
    with pytest.warns(IESWarning, match=r"4 samples were recorded more than once"):
        tr.step()


def test_no_end_epoch_for_a_whole_pass_warns_at_the_next_pass() -> None:
    tr = IES(N)
    loader = DataLoader(IndexedDataset(dataset()), batch_size=16, sampler=tr.sampler())
    model = Plateau()
    with pytest.warns(IESWarning, match=r"end_epoch\(\) was not called since the last pass"):
        for _ in range(2):
            for idx, (x, y) in loader:
                tr.record(idx, loss_fn(model(x), y))


def test_mostly_nonfinite_losses_warn() -> None:
    tr = IES(8)
    tr.record(torch.arange(8), torch.full((8,), float("nan")))
    with pytest.warns(IESWarning, match=r"8 of 8 recorded losses are not finite.*diverged"):
        tr.step()


def test_loading_other_rule_settings_says_which_differ_and_which_win() -> None:
    saved = IES(N, threshold=1e-2).state_dict()
    tr = IES(N, threshold=1e-3)
    with pytest.warns(IESWarning, match=r"'threshold': \(0\.01, 0\.001\).*current settings are used"):
        tr.load_state_dict(saved)
    assert tr.config.threshold == 1e-3


@pytest.mark.parametrize("bad", ["1e-3", True, None, float("nan"), [1e-3]])
def test_threshold_must_be_a_number(bad) -> None:
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        IES(N, threshold=bad)


def test_a_huge_dataset_is_refused_with_the_memory_it_needs() -> None:
    with pytest.raises(ValueError, match=r"1,000,000,000,000 samples needs \d+.*GiB.*bytes per sample"):
        IES(10**12)


def corrupt(state: dict, key: str, value) -> dict:
    bad = dict(state)
    bad[key] = value
    return bad


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("version", 1, "version 1 is not 3"),
        ("probe_due", torch.zeros(N, dtype=torch.float32), "'probe_due' must be a torch.int16 or torch.int32"),
        ("count", torch.zeros(N, dtype=torch.float32), "'count' must be a torch.uint8"),  # float counts refused
        ("accounting", {}, "accounting state 'epoch' lacks"),
        ("epoch", 3.0, "epoch must be an int"),
        ("epoch", True, "epoch must be an int"),
        ("history_log", [{"epoch": 0}], "history_log"),
        ("config", {"threshold": "x"}, "threshold must be a finite number"),
    ],
)
def test_a_half_bad_state_changes_nothing(key, value, match) -> None:
    donor = IES(N)
    for e in range(8):
        donor.record(donor.active_indices(), torch.ones(int(donor.num_active)))
        donor.record_probe(donor.indices_to_probe(), torch.ones(len(donor.indices_to_probe())))
        donor.step()
    tr = IES(N)
    tr.record(torch.arange(3), torch.ones(3))
    before = {k: v.clone() for k, v in tr.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=match):
        tr.load_state_dict(corrupt(donor.state_dict(), key, value))
    after = tr.state_dict()
    assert tr.epoch == 0 and tr.num_active == N and not tr.excluded.any()
    for k, v in before.items():
        assert torch.equal(v.nan_to_num(-1), after[k].nan_to_num(-1)), k


@pytest.mark.parametrize("kw,match", [({"seed": "3"}, "seed must be an int"), ({"seed": 1.5}, "seed must be an int"),
                                      ({"shuffle": 1}, "shuffle must be True or False"),
                                      ({"drop_last": "no"}, "drop_last must be True or False")])
def test_sampler_arguments_are_strict(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        IES(N).sampler(**kw)


def test_an_iterable_dataset_is_refused_even_with_a_length() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from range(3)

        def __len__(self) -> int:
            return 3

    with pytest.raises(ValueError, match=r"map-style dataset.*docs/usage.md"):
        IndexedDataset(Stream())


def test_evaluation_after_end_epoch_is_not_counted_as_training_time() -> None:
    import time

    tr = IES(8, threshold=0.0)
    for _ in range(2):
        tr.record(torch.arange(8), torch.ones(8))
        tr.step()
        time.sleep(0.05)  # "evaluation" between end_epoch and the next epoch's first record
    assert tr.history_log[-1].train_seconds < 0.04


def test_threshold_zero_after_loading_a_state_with_removal_brings_everyone_back() -> None:
    donor = IES(8, threshold=1.0)
    for _ in range(6):
        donor.record(torch.arange(8), torch.ones(8))
        donor.step()
    assert donor.excluded.all()
    tr = IES(8, threshold=0.0)
    with pytest.warns(IESWarning, match="threshold"):
        tr.load_state_dict(donor.state_dict())
    tr.record_probe(torch.arange(8), torch.ones(8))
    s = tr.step()
    assert s.reincluded == 8 and not tr.excluded.any()


def _edit_tensor(key, index, value):
    def edit(state):
        t = state[key].clone()
        if key == "history":  # the newest loss of an excluded sample (the rule excluded it after finite losses)
            t[int(state["excluded"].nonzero()[0]), -1] = value
        else:
            t[index] = value
        return {**state, key: t}
    return edit


def _edit_books(part, key, value):
    def edit(state):
        books = {p: dict(d) for p, d in state["accounting"].items()}
        books[part][key] = value
        return {**state, "accounting": books}
    return edit


@pytest.mark.parametrize("edit,match", [  # issue 21: values a real run cannot produce
    (_edit_tensor("times_excluded", 0, -100), "'times_excluded' holds -100, below its minimum 0"),
    (_edit_tensor("history", None, float("inf")), "non-finite newest losses for excluded samples"),
    (_edit_tensor("probe_interval", 0, 0), "'probe_interval' holds 0, below its minimum 1"),
    (_edit_tensor("probe_interval", 5, -7), "'probe_interval' holds -7"),
    (_edit_tensor("probe_due", 0, -1), "'probe_due' holds -1"),  # (count, train_records: unsigned since state v3)
    (_edit_tensor("first_mastered", 0, -2), "'first_mastered' holds -2"),
    (_edit_books("total", "backprop", float("nan")), "non-finite entries"),
    (_edit_books("total", "trained", float("inf")), "non-finite entries"),
    (_edit_books("seconds", "train", float("inf")), "non-finite entries"),
    (_edit_books("total", "backprop", 10**6), "backprop 1000000 > trained"),
    (_edit_books("total", "epochs", 3), r"total.epochs \(3\) and history_log \(8 epochs\) must both equal epoch \(8\)"),
])
def test_state_values_a_run_cannot_produce_are_refused(edit, match) -> None:
    donor = IES(N)
    for e in range(8):
        donor.record(donor.active_indices(), torch.ones(int(donor.num_active)))
        donor.record_probe(donor.indices_to_probe(), torch.ones(len(donor.indices_to_probe())))
        donor.step()
    state = donor.state_dict()
    assert state["excluded"].any()
    IES(N).load_state_dict(state)  # the unedited state loads
    tr = IES(N)
    with pytest.raises(ValueError, match=match):
        tr.load_state_dict(edit(state))
    assert tr.epoch == 0 and not tr.excluded.any()
