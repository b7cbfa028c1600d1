"""Statistics accounting, options (threshold 0, annealing, probe_every, probe_all),
per-sample counters and export, and the scoring helper."""

from __future__ import annotations

import math
from typing import Callable, List, Set

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ies import IES, EpochStats, IESWarning, IndexedDataset, probe_losses


def plateau_then_jump(i: int, e: int) -> float:
    """Samples 0-3: constant (mastered after six losses); sample 4: constant, then a jump at
    epoch 8 (re-included at 9) and a new plateau (mastered again, excluded from 13);
    samples 5-7: alternating, never mastered."""
    if i < 4:
        return 1.0
    if i == 4:
        return 1.0 if e < 8 else 2.0
    return 1.0 + 0.5 * (e % 2) + 0.1 * i


def expected_excluded(e: int) -> Set[int]:
    """Samples left out during epoch ``e`` for :func:`plateau_then_jump` with the defaults."""
    out = set(range(4)) if e >= 6 else set()
    if 6 <= e <= 8 or e >= 13:
        out.add(4)
    return out


def run_epoch(tr: IES, loss: Callable[[int, int], float], e: int, *, batch: int = 3, skip_backprop: int = 0) -> None:
    """Train the active samples (``record``), then score the excluded ones (``record_probe``)."""
    active = tr.active_indices().tolist()
    for s in range(0, len(active), batch):
        b = active[s : s + batch]
        vals = torch.tensor([loss(i, e) for i in b])
        tr.record(torch.tensor(b), vals, backpropagated=max(len(b) - skip_backprop, 0) if skip_backprop else None)
    idx = tr.indices_to_probe().tolist()
    if idx:
        tr.record_probe(torch.tensor(idx), torch.tensor([loss(i, e) for i in idx]))


def test_statistics_accounting() -> None:
    n, fc = 8, 0.25
    tr = IES(n, forward_cost=fc, probe_backoff=False)  # every excluded sample probed every epoch
    tot_excl = tot_train = tot_bp = tot_scored = 0
    for e in range(16):
        now, nxt = expected_excluded(e), expected_excluded(e + 1)
        assert set(tr.excluded_indices().tolist()) == now
        assert tr.num_active == n - len(now)
        n_active = n - len(now)
        n_batches = math.ceil(n_active / 3)
        run_epoch(tr, plateau_then_jump, e, skip_backprop=1)
        s = tr.step()
        assert isinstance(s, EpochStats)
        assert s.epoch == e and s.num_samples == n
        assert s.active == n_active
        assert s.excluded == len(now)
        assert s.mastered == len(nxt)
        assert s.newly_excluded == len(nxt - now)
        assert s.reincluded == len(now - nxt)
        assert s.next_active == n - len(nxt)
        assert s.trained == n_active
        assert s.backpropagated == n_active - n_batches
        assert s.probed == len(now)
        assert s.nonfinite == 0
        tot_excl += len(now)
        tot_train += n_active
        tot_bp += n_active - n_batches
        tot_scored += len(now)
        denom = n * (e + 1)
        assert s.backprop_saved == pytest.approx(1.0 - tot_bp / denom)  # from the counts: what happened
        assert s.compute_saved == pytest.approx(1.0 - (tot_bp + fc * (tot_train - tot_bp + tot_scored)) / denom)
        assert s.as_dict()["excluded"] == len(now)
        assert tr.epoch == e + 1
    assert [x.epoch for x in tr.history_log] == list(range(16))
    assert [x.reincluded for x in tr.history_log] == [1 if e == 8 else 0 for e in range(16)]


def test_reincluded_is_only_the_jumping_sample() -> None:
    tr = IES(8)
    back = []
    for e in range(16):
        before = set(tr.excluded_indices().tolist())
        run_epoch(tr, plateau_then_jump, e)
        s = tr.step()
        after = set(tr.excluded_indices().tolist())
        back.append((e, sorted(before - after)))
        assert s.reincluded == len(before - after)
    assert [b for b in back if b[1]] == [(8, [4])]


def test_default_compute_saved_counts_scoring_at_one_third() -> None:
    tr = IES(4, probe_backoff=False)  # forward_cost 1/3, probing every epoch
    for e in range(8):
        run_epoch(tr, lambda i, e: 1.0, e)
        s = tr.step()
    # epochs 0-5: all 4 trained; 6-7: all 4 excluded and scored
    denom = 4 * 8
    assert s.backprop_saved == pytest.approx(8 / denom)
    assert s.compute_saved == pytest.approx(1 - (24 + (1 / 3) * 8) / denom)


def test_threshold_zero_never_excludes() -> None:
    tr = IES(5, threshold=0.0)
    for e in range(20):
        tr.record(torch.arange(5), torch.zeros(5))
        assert tr.indices_to_probe().numel() == 0  # asked after training, as end_epoch does
        s = tr.step()
        assert s.excluded == 0 and s.newly_excluded == 0 and s.next_active == 5
    assert not tr.excluded.any()
    # the criterion is still computed (a plateau of zeros scores 0), only removal is off
    assert torch.equal(tr.criterion(), torch.zeros(5))
    assert s.mastered == 0  # 0 < 0 is false


def test_annealing_stops_exclusion_from_anneal_start() -> None:
    tr = IES(4, anneal_fraction=0.3, total_epochs=10)
    assert tr.config.anneal_start == 7
    assert IES(4, anneal_fraction=0.1, total_epochs=10).config.anneal_start == 9
    assert IES(4, anneal_fraction=0.01, total_epochs=10).config.anneal_start == 9  # at least one epoch
    assert IES(4).config.anneal_start is None
    excluded_per_epoch = []
    for e in range(10):
        excluded_per_epoch.append(int(tr.excluded.sum()))
        run_epoch(tr, lambda i, e: 1.0, e)
        s = tr.step()
        if e == 6:  # last step before annealing: everyone comes back
            assert s.excluded == 4 and s.reincluded == 4 and s.next_active == 4
        if e >= 6:
            assert s.next_active == 4 and s.newly_excluded == 0
    assert excluded_per_epoch == [0, 0, 0, 0, 0, 0, 4, 0, 0, 0]


def test_probe_every_keeps_excluded_between_probes() -> None:
    r = 3
    tr = IES(4, probe_every=r, probe_backoff=False)

    def loss(i: int, e: int) -> float:
        return 2.0 if (i == 0 and e >= 8) else 1.0

    excl = []
    for e in range(13):
        before = set(tr.excluded_indices().tolist())
        due = {i for i in before if (i + e) % r == 0}  # staggered: each once every r epochs
        for i in sorted(set(range(4)) - before):
            tr.record(torch.tensor([i]), torch.tensor([loss(i, e)]))
        asked = tr.indices_to_probe().tolist()
        assert set(asked) == due
        if asked:
            tr.record_probe(torch.tensor(asked), torch.tensor([loss(i, e) for i in asked]))
        s = tr.step()
        after = set(tr.excluded_indices().tolist())
        assert s.probed == len(due)
        assert before - after <= due  # only a probed sample can come back
        excl.append(sorted(after))
    # mastered after epoch 5 (six losses); sample 0 jumps at 8, is next probed at 9 ((0 + 9) % 3 == 0)
    assert excl[5] == excl[6] == excl[7] == excl[8] == [0, 1, 2, 3]
    assert excl[9] == [1, 2, 3]


class ConstLoss(nn.Module):
    """Model whose per-sample loss is the input's first feature (in a 1-feature dataset)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes: List[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x[:, 0] * self.scale


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out + 0.0 * y


def test_probe_all_scores_every_sample_and_replaces_training_losses() -> None:
    n = 6
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1) / 10
    ds = TensorDataset(x, torch.zeros(n))
    model = ConstLoss()
    tr = IES(n, probe_all=True)
    for e in range(3):
        assert torch.equal(tr.indices_to_probe(), torch.arange(n))
        tr.record(torch.arange(n), torch.full((n,), 5.0))
        s = tr.end_epoch(model, ds, loss_fn, batch_size=4)
        assert s.probed == n and s.trained == n
        assert torch.allclose(tr.history[:, -1], x[:, 0])  # the scoring losses, not the 5.0s


def test_probe_returns_count_and_probes_untrained_active_samples() -> None:
    n = 4
    ds = TensorDataset(torch.ones(n, 1), torch.zeros(n))
    model = ConstLoss()
    tr = IES(n, probe_every=2)
    tr.record(torch.tensor([0, 1, 2]), torch.ones(3))  # sample 3 active but never trained (drop_last, say)
    assert tr.probe(model, ds, loss_fn) == 1
    s = tr.step()
    assert s.unrecorded == 1 and s.probed == 1 and s.trained == 3
    tr.excluded[1] = True  # pretend sample 1 is excluded; epoch 1: (1 + 1) % 2 == 0, its turn
    tr.record(torch.tensor([0, 2, 3]), torch.ones(3))
    assert tr.probe(model, ds, loss_fn) == 1
    assert tr.probe(model, ds, loss_fn) == 0  # already probed this epoch


def test_per_sample_counters_and_export(tmp_path) -> None:
    tr = IES(8)
    for e in range(16):
        run_epoch(tr, plateau_then_jump, e)
        tr.step()
    ps = tr.per_sample()
    # epochs excluded (decided so far, including the coming epoch 16)
    want_times = [sum(1 for e in range(1, 17) if i in expected_excluded(e)) for i in range(8)]
    assert ps["times_excluded"].tolist() == want_times
    assert ps["times_reincluded"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert ps["first_mastered_epoch"].tolist() == [6, 6, 6, 6, 6, -1, -1, -1]
    assert ps["excluded_now"].tolist() == [True] * 5 + [False] * 3
    assert ps["criterion"][:5].tolist() == [0.0] * 5 and (ps["criterion"][5:] > 1e-3).all()
    path = tmp_path / "per_sample.npz"
    tr.export(path)
    with np.load(path) as z:
        assert set(z.files) == {"times_excluded", "times_reincluded", "first_mastered_epoch", "excluded_now", "criterion"}
        for k, v in ps.items():
            assert np.array_equal(z[k], v.numpy()), k
        assert z["excluded_now"].dtype == np.bool_


def test_record_returns_its_input_unchanged() -> None:
    tr = IES(4)
    w = torch.ones(4, requires_grad=True)
    losses = w * torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = tr.record(torch.tensor([3, 1, 0, 2]), losses)
    assert out is losses
    out.mean().backward()  # still part of the graph
    assert torch.allclose(w.grad, torch.tensor([0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(tr.pending, torch.tensor([3.0, 2.0, 4.0, 1.0]))
    assert not tr.pending.requires_grad
    half = torch.tensor([0.5, 1.5], dtype=torch.float16)
    assert tr.record(torch.tensor([0, 1]), half) is half
    later = torch.tensor([7.0])
    tr.record(torch.tensor([3]), later)
    later.mul_(10)  # changed in place after recording: the recorded value is the one given
    assert tr.pending[3].item() == 7.0


# --------------------------------------------------------------------------- probe_losses
def index_dataset(n: int = 20) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.zeros(n))


@pytest.mark.parametrize("start_training", [True, False])
def test_probe_losses_uses_eval_mode_and_restores(start_training: bool) -> None:
    model = ConstLoss()
    model.train(start_training)
    out = probe_losses(model, index_dataset(), [3, 4, 5], loss_fn, batch_size=2)
    assert model.modes == [False, False]
    assert model.training == start_training
    model.modes.clear()
    probe_losses(model, index_dataset(), [3, 4, 5], loss_fn, eval_mode=False)
    assert model.modes == [start_training]
    assert model.training == start_training
    assert not out.requires_grad


def test_probe_losses_restores_mode_after_error() -> None:
    model = ConstLoss().train()

    def bad(model: nn.Module, batch) -> torch.Tensor:
        model(batch[0])
        return torch.zeros(2, 2)  # not one loss per sample

    with pytest.raises(ValueError, match="reduction='none'"):
        probe_losses(model, index_dataset(), [1, 2], forward=bad)
    assert model.training


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_probe_losses_order_matches_indices(wrap: bool, as_tensor: bool) -> None:
    ds = index_dataset()
    if wrap:
        ds = IndexedDataset(ds)
    idx = [13, 2, 7, 19, 0, 7 - 1, 11]
    out = probe_losses(ConstLoss(), ds, torch.tensor(idx) if as_tensor else idx, loss_fn, batch_size=3)
    assert out.dtype == torch.float32
    assert out.tolist() == [float(i) for i in idx]


def test_probe_losses_custom_forward_and_empty() -> None:
    ds = IndexedDataset(index_dataset())
    model = ConstLoss()
    out = probe_losses(model, ds, torch.tensor([5, 1]), forward=lambda mdl, batch: 2 * mdl(batch[0]) + 1)
    assert out.tolist() == [11.0, 3.0]
    assert probe_losses(model, ds, [], loss_fn).numel() == 0
    with pytest.raises(ValueError, match="loss_fn"):
        probe_losses(model, ds, [1])


def test_end_epoch_scores_excluded_with_a_model() -> None:
    """Full loop: excluded samples are scored by the model (eval mode) and judged on that."""
    n = 6
    ds = IndexedDataset(TensorDataset(torch.ones(n, 1), torch.zeros(n)))
    model = ConstLoss()
    tr = IES(n, probe_backoff=False)
    for e in range(9):
        active = tr.active_indices()
        if active.numel():
            tr.record(active, torch.ones(active.numel()))
        s = tr.end_epoch(model, ds, loss_fn)
        assert s.probed == s.excluded
    assert tr.excluded.all()  # plateau of 1.0 in training and in scoring
    assert model.training


# --------------------------------------------------------------------------- history ring
@pytest.mark.parametrize("dense", [False, True])
def test_history_ring_matches_a_plain_shift(dense: bool) -> None:
    """The ring buffer (CPU all-got shortcut, else the bitwise select) behaves like the
    plain per-row shift of an (N, H) history, with and without missing samples."""
    n, h = 7, 4
    tr = IES(n, order=1, window=2, m=1)
    plain = torch.full((n, h), float("nan"))
    g = torch.Generator().manual_seed(0)
    for e in range(11):
        got = torch.rand(n, generator=g) < 0.6
        if e == 3:
            got[:] = True
        if e == 4:
            got[:] = False
        vals = torch.randn(n, generator=g)
        if got.any():
            tr.record(torch.nonzero(got).flatten(), vals[got])
        shifted = torch.cat([plain[:, 1:], vals.unsqueeze(1)], dim=1)
        plain = torch.where(got.unsqueeze(1), shifted, plain)
        tr._commit(tr.pending_mask, dense=dense)
        tr._records.reset()
        assert torch.allclose(tr.history, plain, equal_nan=True, rtol=0, atol=0), e


def test_history_property_round_trip() -> None:
    tr = IES(3, order=0, window=1, m=1)
    for v in (1.0, 2.0, 3.0):
        tr.record(torch.arange(3), torch.full((3,), v))
        tr.step()
    assert tr.history.tolist() == [[2.0, 3.0]] * 3
    tr.history = torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]])
    assert tr.history.tolist() == [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]
    tr.record(torch.tensor([1]), torch.tensor([0.5]))
    tr.step()
    assert tr.history.tolist() == [[5.0, 6.0], [8.0, 0.5], [9.0, 10.0]]


# --------------------------------------------------------------------------- state layout (issue 20)
def _state_bytes(tr: IES) -> float:
    tensors = [tr._history.ring, tr._records.pending, tr._records.flags, tr.excluded, tr.count, tr.times_excluded,
               tr.times_reincluded, tr.first_mastered, tr.probe_doublings, tr.probe_due]
    return sum(t.numel() * t.element_size() for t in tensors) / tr.num_samples


def test_state_is_40_bytes_per_sample_and_bytes_per_sample_says_so() -> None:
    from ies.layout import bytes_per_sample
    tr = IES(1000)
    assert bytes_per_sample(tr.config) == 40 == _state_bytes(tr)  # 61 before issue 20
    wide = IES(10, window=300)  # H = 303 > 254: the count needs int16
    assert wide.count.dtype == torch.int16 and bytes_per_sample(wide.config) == _state_bytes(wide)


def _trace_step(tr: IES, e: int, g: torch.Generator, base: torch.Tensor) -> None:
    """One epoch of a random trace: plateaus, noise and jumps; some active samples missed; the probe pass."""
    n = tr.num_samples
    noise = torch.randint(-3, 4, (n,), generator=g).float() * 2.0**-14 * (torch.arange(n) % 3)
    jump = (torch.rand(n, generator=g) < 0.05).float() * 0.5
    losses = base + noise + jump
    act = tr.active_indices()
    act = act[torch.rand(act.numel(), generator=g) < 0.9]
    for part in act.split(7):
        tr.record(part, losses[part])
    probe = tr.indices_to_probe()
    tr.record_probe(probe, losses[probe])


@pytest.mark.parametrize("rule", [dict(), dict(probe_backoff=False, probe_every=2), dict(probe_max_interval=3),
                                  dict(target_saving=0.3, total_epochs=40)])
def test_small_dtypes_give_the_same_exclusions_as_wide_ones(monkeypatch, rule) -> None:
    """Random traces: the default layout against int64 counters, epoch by epoch; the back-off interval
    (kept as doublings) against the int32 interval the old code kept, via ies.probing.backoff_next."""
    import ies.tracker as trk
    from ies.probing import backoff_next
    n, g1, g2 = 300, torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    base = (torch.rand(n, generator=torch.Generator().manual_seed(2)) * 4 / 2.0**-14).round() * 2.0**-14
    small = IES(n, **rule)
    monkeypatch.setattr(trk, "count_dtype", lambda h: torch.int64)
    monkeypatch.setattr(trk, "epoch_dtype", lambda epoch, cap: torch.int64)
    wide = IES(n, **rule)
    assert wide.count.dtype == torch.int64 and small.count.dtype == torch.uint8
    c = small.config
    interval = torch.full((n,), c.probe_every, dtype=torch.int32)
    due = torch.zeros(n, dtype=torch.int32)
    excluded_ever = 0
    for e in range(40):
        _trace_step(small, e, g1, base)
        _trace_step(wide, e, g2, base)
        was, probed = small.excluded.clone(), small.probe_records > 0
        assert small.step().counts() == wide.step().counts()
        assert torch.equal(small.excluded, wide.excluded), e
        for k in ("count", "times_excluded", "times_reincluded", "first_mastered", "probe_due"):
            assert torch.equal(getattr(small, k).long(), getattr(wide, k)), (e, k)
        if c.probe_backoff:
            interval, due = backoff_next(interval, due, probed, was & small.excluded, small.excluded & ~was, e,
                                         first=c.probe_every, cap=c.probe_max_interval)
            assert torch.equal(small.probe_interval, interval) and torch.equal(small.probe_due.int(), due), e
        excluded_ever += int(small.excluded.sum())
    assert excluded_ever > 0 and int(small.times_reincluded.sum()) > 0  # the trace exercised both ways


def test_epoch_counters_widen_before_int16_could_wrap() -> None:
    tr = IES(4, order=1, window=1, m=1, probe_max_interval=8)  # constant losses: excluded after 3 epochs
    assert tr.first_mastered.dtype == torch.int16
    tr.epoch = 32_755
    for _ in range(14):
        tr.record(tr.active_indices(), torch.ones(int(tr.num_active)))
        tr.record_probe(tr.indices_to_probe(), torch.ones(len(tr.indices_to_probe())))
        tr.step()
    assert tr.first_mastered.dtype == torch.int32 and tr.probe_due.dtype == torch.int32
    assert tr.first_mastered.tolist() == [32_758] * 4 and int(tr.probe_due.max()) == 32_772  # due 32758, 60, 64, 72
    assert IES(4, probe_max_interval=40_000).times_excluded.dtype == torch.int32  # widened from the start


def test_records_of_one_sample_cannot_wrap() -> None:
    """Issue 21: an int16 record count wrapped at 32,768 records of one sample and dropped its loss."""
    tr = IES(3, order=0, window=1, m=1)
    one, loss = torch.tensor([1]), torch.tensor([0.25])
    for _ in range(33_000):
        tr.record(one, loss)
    assert tr.train_records.tolist() == [0, 2, 0]  # 2: more than once (saturates)
    with pytest.warns(IESWarning, match="recorded more than once"):
        tr.step()
    assert tr.history[1, -1].item() == 0.25 and int(tr.count[1]) == 1


def test_a_version_2_state_loads_into_the_small_layout() -> None:
    a = IES(50, order=1, window=2, m=1)
    g = torch.Generator().manual_seed(0)
    base = torch.rand(50, generator=g)
    for e in range(8):
        _trace_step(a, e, g, base)
        a.step()
    v3 = a.state_dict()
    v2 = dict(v3, version=2, count=v3["count"].int(), train_records=v3["train_records"].to(torch.int16),
              probe_records=v3["probe_records"].to(torch.int16),
              **{k: v3[k].int() for k in ("times_excluded", "times_reincluded", "first_mastered", "probe_due")})
    b, c = IES(50, order=1, window=2, m=1), IES(50, order=1, window=2, m=1)
    b.load_state_dict(v2)
    c.load_state_dict(v3)
    for k, v in c.state_dict().items():
        w = b.state_dict()[k]
        assert (torch.equal(v.nan_to_num(-1), w.nan_to_num(-1)) and v.dtype == w.dtype) if isinstance(v, torch.Tensor) \
            else v == w, k
    bad = dict(v2, count=v2["count"].to(torch.uint8))  # a version-2 state holds int32 counts
    with pytest.raises(ValueError, match=r"'count' must be a torch.int32 tensor .*state version 2"):
        IES(50, order=1, window=2, m=1).load_state_dict(bad)


def test_the_device_write_path_on_cpu_tensors(monkeypatch) -> None:
    """The off-CPU path of ies.records (each call written at once, checks reported at step()), run on CPU
    tensors by making the records believe they live elsewhere: same results as the queued CPU path."""
    from types import SimpleNamespace
    a, b = IES(6, order=0, window=1, m=1), IES(6, order=0, window=1, m=1)
    b._records.device = SimpleNamespace(type="cuda")
    b._records.maybe_nonfinite = True  # as built on a GPU: the non-finite count is always exact there
    for t in (a, b):
        t.record(torch.tensor([0, 1, 2]), torch.tensor([0.5, 1.0, 1.5]))
        t.record(torch.tensor([2, 3]), torch.tensor([2.0, 2.5]))  # 2 again: recorded more than once
        t.record_probe(torch.tensor([4, 5]), torch.tensor([float("nan"), 3.0]))
    assert torch.equal(a.train_records, b.train_records) and a.train_records.tolist() == [1, 1, 2, 1, 0, 0]
    with pytest.warns(IESWarning):
        sa = a.step()
    with pytest.warns(IESWarning):
        sb = b.step()
    assert sa.counts() == sb.counts() and sa.nonfinite == 1
    assert torch.equal(a.history.nan_to_num(-1), b.history.nan_to_num(-1))
    b.record(torch.tensor([1, 1]), torch.tensor([0.1, 0.2]))  # a repeated index in one call: reported at step()
    with pytest.raises(ValueError, match="duplicate index"):
        b.step()
