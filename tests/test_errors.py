"""Bad input raises ValueError naming the fix; non-finite losses do not raise."""

from __future__ import annotations

import math

import pytest
import torch

from ies import IES, IESConfig, IESWarning


def tr4(**kw) -> IES:
    return IES(4, **kw)


# --------------------------------------------------------------------------- record()
@pytest.mark.parametrize("method", ["record", "record_probe"])
def test_scalar_loss(method: str) -> None:
    t = tr4()
    with pytest.raises(ValueError, match=r"reduction='none'"):
        getattr(t, method)(torch.arange(4), torch.rand(4).mean())


@pytest.mark.parametrize("method", ["record", "record_probe"])
def test_two_d_losses(method: str) -> None:
    t = tr4()
    with pytest.raises(ValueError, match=r"1-D.*reduce"):
        getattr(t, method)(torch.arange(4), torch.rand(4, 3))


def test_length_mismatch() -> None:
    t = tr4()
    with pytest.raises(ValueError, match=r"differ in length \(3 vs 4\).*IndexedDataset"):
        t.record(torch.arange(3), torch.rand(4))


@pytest.mark.parametrize("bad", [-1, 4, 100])
def test_index_out_of_range(bad: int) -> None:
    """record() only queues the batch on CPU (cheap); the check runs when the epoch's records are
    first read (probe pass, step, checkpoint) and names the call; nothing of the queue is written."""
    t = tr4()
    t.record(torch.tensor([3]), torch.rand(1))
    t.record(torch.tensor([0, bad]), torch.rand(2))
    with pytest.raises(ValueError, match=rf"out of range in record\(\) call #2 .*got {bad}.*num_samples=4.*0\.\.3"):
        t.step()
    assert not t.pending_mask.any() and t.epoch == 0  # nothing half-written, the epoch not stepped


def test_duplicate_index_in_one_record() -> None:
    t = tr4()
    t.record(torch.tensor([1, 2, 1]), torch.rand(3))
    with pytest.raises(ValueError, match=r"duplicate index in record\(\) call #1.*once"):
        t.step()
    t.record_probe(torch.tensor([3, 3]), torch.rand(2))
    with pytest.raises(ValueError, match=r"duplicate index"):
        t.indices_to_probe()  # any read of the epoch's records checks them
    assert not t.pending_mask.any()
    # the same index in two different calls of one epoch is allowed (the last one counts)
    t.record(torch.tensor([1]), torch.tensor([1.0]))
    t.record_probe(torch.tensor([1]), torch.tensor([2.0]))
    assert t.pending[1].item() == 2.0


def test_index_and_loss_dtypes() -> None:
    t = tr4()
    with pytest.raises(ValueError, match="integer"):
        t.record(torch.tensor([0.0, 1.0]), torch.rand(2))
    with pytest.raises(ValueError, match="floating"):
        t.record(torch.tensor([0, 1]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="two tensors"):
        t.record([0, 1], torch.rand(2))
    t.record(torch.tensor([0, 1], dtype=torch.int32), torch.rand(2, dtype=torch.float64))  # accepted


def test_empty_record_is_fine() -> None:
    t = tr4()
    t.record(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    with pytest.warns(IESWarning, match="4 samples were active but no training loss was recorded"):
        assert t.step().trained == 0


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"threshold": -1e-3}, r"threshold.*>= 0.*0 disables"),
        ({"threshold": float("nan")}, r"threshold.*>= 0"),
        ({"threshold": float("inf")}, r"threshold.*finite"),
        ({"threshold": "high"}, r"threshold must be a finite number"),
        ({"window": 0}, r"window must be an int >= 1"),
        ({"window": -2}, r"window must be an int >= 1"),
        ({"window": 2.0}, r"window must be an int >= 1"),
        ({"m": 0}, r"m must be an int >= 1"),
        ({"order": -1}, r"order must be an int in 0\.\.3"),
        ({"order": 4}, r"order must be an int in 0\.\.3"),
        ({"order": 2.5}, r"order must be an int in 0\.\.3"),
        ({"order": True}, r"order must be an int in 0\.\.3"),
        ({"probe_every": 0}, r"probe_every must be an int >= 1"),
        ({"anneal_fraction": 0.1}, r"anneal_fraction > 0 needs total_epochs"),
        ({"anneal_fraction": 1.0, "total_epochs": 10}, r"anneal_fraction must be in \[0, 1\)"),
        ({"total_epochs": 0}, r"total_epochs must be an int >= 1"),
        ({"forward_cost": 0.0}, r"forward_cost must be in \(0, 1\]"),
    ],
)
def test_bad_config(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        IES(10, **kw)
    with pytest.raises(ValueError, match=match):
        IESConfig(**kw)  # a frozen dataclass validated in __post_init__ (there is no validate())
    assert not hasattr(IESConfig, "validate")


@pytest.mark.parametrize("n", [0, -5, 2.0, True, None])
def test_bad_num_samples(n) -> None:
    with pytest.raises(ValueError, match=r"num_samples must be a positive int \(len of the training set\)"):
        IES(n)


def test_good_edge_config() -> None:
    IES(1, threshold=0, order=0, window=1, m=1)
    IES(1, order=3, anneal_fraction=0.5, total_epochs=2, probe_every=7)


# --------------------------------------------------------------------------- load_state_dict
def test_load_state_of_another_size() -> None:
    sd = IES(10).state_dict()
    with pytest.raises(ValueError, match=r"dataset of 10 samples.*has 4.*same training set"):
        tr4().load_state_dict(sd)


@pytest.mark.parametrize("kw", [{"order": 1}, {"window": 2}, {"m": 2}, {"order": 0, "window": 4}])
def test_load_state_with_another_rule_shape(kw) -> None:
    sd = tr4(**kw).state_dict()
    with pytest.raises(ValueError, match=r"different rule shape.*build the tracker with the saved order, window and m"):
        tr4().load_state_dict(sd)


def test_load_state_threshold_may_differ() -> None:
    sd = tr4(threshold=0.5).state_dict()
    t = tr4(threshold=1e-3)
    with pytest.warns(IESWarning, match=r"saved with other rule settings \{'threshold': \(0.5, 0.001\)\}"):
        t.load_state_dict(sd)
    assert t.config.threshold == 1e-3  # the current tracker's threshold is kept


@pytest.mark.parametrize("key", ["history", "pending", "excluded", "epoch", "config", "accounting", "num_samples"])
def test_load_state_missing_keys(key: str) -> None:
    sd = tr4().state_dict()
    del sd[key]
    with pytest.raises(ValueError, match=rf"missing keys \['{key}'\].*state_dict\(\)"):
        tr4().load_state_dict(sd)


def test_load_state_not_a_dict_or_bad_shape() -> None:
    with pytest.raises(ValueError, match="state_dict"):
        tr4().load_state_dict([1, 2])
    sd = tr4().state_dict()
    sd["count"] = torch.zeros(5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"'count' must be a torch.uint8 tensor of shape \(4,\)"):
        tr4().load_state_dict(sd)


def test_failed_load_leaves_tracker_usable() -> None:
    t = tr4()
    sd = IES(5).state_dict()
    with pytest.raises(ValueError):
        t.load_state_dict(sd)
    t.record(torch.arange(4), torch.ones(4))
    assert t.step().trained == 4


# --------------------------------------------------------------------------- non-finite losses
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_losses_are_counted_not_raised(bad: float) -> None:
    """A non-finite loss keeps its sample from being mastered while it is among the last
    k + w + m = 6 losses; training goes on and EpochStats.nonfinite counts it."""
    n = 3
    t = IES(n)
    for e in range(20):
        vals = torch.zeros(n)
        if e == 4:
            vals[1] = bad
            vals[2] = bad
        if e == 5:
            vals[2] = bad
        idx = torch.arange(n)
        active = t.active_mask
        t.record(idx[active], vals[active])
        if (~active).any():
            t.record_probe(idx[~active], vals[~active])
        if e == 4:  # two of three non-finite: more than half, so IES says training likely diverged
            with pytest.warns(IESWarning, match="2 of 3 recorded losses are not finite"):
                s = t.step()
        else:
            s = t.step()
        assert s.nonfinite == {4: 2, 5: 1}.get(e, 0)
        ex = t.excluded.tolist()
        # sample 0: six zeros after epoch 5. sample 1: non-finite at 4, so the first six finite
        # losses end at epoch 10. sample 2: the last non-finite at 5, mastered after epoch 11.
        assert ex == [e >= 5, e >= 10, e >= 11], e
        assert math.isinf(t.criterion()[1]) == (e < 10)  # too short (e < 5), then non-finite inside
    assert sum(x.nonfinite for x in t.history_log) == 3


def test_nonfinite_loss_reincludes_an_excluded_sample() -> None:
    t = IES(2)
    for _ in range(6):
        t.record(torch.arange(2), torch.zeros(2))
        t.step()
    assert t.excluded.all()
    t.record_probe(torch.tensor([0, 1]), torch.tensor([float("nan"), 0.0]))
    s = t.step()
    assert s.nonfinite == 1 and s.reincluded == 1
    assert t.excluded.tolist() == [False, True]
