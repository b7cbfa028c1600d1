"""ActiveSampler: determinism, coverage, no side effects, DataLoader and distributed use."""

from __future__ import annotations

import math
from typing import Iterable, List, Set

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ies import IES, ActiveSampler, IndexedDataset
from ies.sampler import active_order


def fast_tracker(n: int) -> IES:
    """A tracker that judges after two losses (order 0, w 1, m 1): a loss of 0 masters."""
    return IES(n, threshold=0.5, order=0, window=1, m=1, probe_backoff=False)


def epoch_with(tr: IES, excluded_next: Iterable[int]) -> None:
    """Record one epoch so that after two such epochs exactly ``excluded_next`` is excluded."""
    ex = set(excluded_next)
    idx, act = torch.arange(tr.num_samples), tr.active_mask
    losses = torch.tensor([0.0 if i in ex else 1.0 for i in range(tr.num_samples)])
    tr.record(idx[act], losses[act])  # trained
    tr.record_probe(idx[~act], losses[~act])  # excluded: measured by the probe pass
    tr.step()


def tracker_with_excluded(n: int, excluded: Iterable[int]) -> IES:
    tr = fast_tracker(n)
    excluded = list(excluded)
    epoch_with(tr, excluded)
    epoch_with(tr, excluded)
    assert sorted(tr.excluded_indices().tolist()) == sorted(excluded)
    return tr


N = 50
EXCLUDED = [1, 2, 3, 10, 11, 17, 25, 26, 31, 40, 44, 49]
ACTIVE = [i for i in range(N) if i not in EXCLUDED]  # 38 active


def test_every_active_index_exactly_once_and_no_excluded() -> None:
    tr = tracker_with_excluded(N, EXCLUDED)
    s = ActiveSampler(tr, seed=3)
    out = list(s)
    assert sorted(out) == ACTIVE
    assert not set(out) & set(EXCLUDED)
    assert len(s) == len(out) == len(ACTIVE)
    assert out != sorted(out)  # shuffled


def test_no_shuffle_is_ascending() -> None:
    tr = tracker_with_excluded(N, EXCLUDED)
    assert list(ActiveSampler(tr, shuffle=False)) == ACTIVE


def test_deterministic_per_seed_and_epoch() -> None:
    tr = tracker_with_excluded(N, EXCLUDED)
    a, b = ActiveSampler(tr, seed=7), ActiveSampler(tr, seed=7)
    orders = {}
    for e in range(4):
        a.set_epoch(e)
        b.set_epoch(e)
        orders[e] = list(a)
        assert orders[e] == list(b)
        assert orders[e] == active_order(tr.active_mask, epoch=e, seed=7).tolist()
    assert len({tuple(v) for v in orders.values()}) == 4  # epochs differ
    c = ActiveSampler(tr, seed=8)
    c.set_epoch(0)
    assert list(c) != orders[0]  # seeds differ
    # a fresh tracker with the same state gives the same order (nothing global is used)
    torch.manual_seed(123)
    tr2 = tracker_with_excluded(N, EXCLUDED)
    assert list(ActiveSampler(tr2, seed=7)) == list(ActiveSampler(tr, seed=7))


def test_epoch_follows_tracker_unless_set() -> None:
    tr = tracker_with_excluded(N, [])
    s = ActiveSampler(tr, seed=0)
    assert s.epoch == tr.epoch == 2
    first = list(s)
    epoch_with(tr, [])
    assert s.epoch == 3 and list(s) != first
    s.set_epoch(2)
    assert list(s) == first and tr.epoch == 3


def test_iter_twice_same_and_no_side_effects() -> None:
    tr = tracker_with_excluded(N, EXCLUDED)
    s = ActiveSampler(tr, seed=1)
    state = {k: v.clone() for k, v in tr.state_dict().items() if isinstance(v, torch.Tensor)}
    rng = torch.get_rng_state()
    first, second = list(iter(s)), list(iter(s))
    assert first == second
    assert tr.epoch == 2 and s.epoch == 2 and s._epoch is None
    assert torch.equal(torch.get_rng_state(), rng)  # no global RNG consumed
    for k, v in tr.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]) if not v.is_floating_point() else torch.allclose(v, state[k], equal_nan=True), k


def test_len_exact_before_the_epoch_and_after_changes() -> None:
    tr = fast_tracker(N)
    s = ActiveSampler(tr)
    assert len(s) == N == len(list(s))
    epoch_with(tr, EXCLUDED)
    assert len(s) == N == len(list(s))  # one loss each: nobody judged yet
    epoch_with(tr, EXCLUDED)
    assert len(s) == len(ACTIVE) == len(list(s))
    epoch_with(tr, EXCLUDED[:5])  # the other 7 come back
    assert len(s) == N - 5 == len(list(s))


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 5, 8, 38, 64])
def test_dataloader_batches(drop_last: bool, batch_size: int) -> None:
    tr = tracker_with_excluded(N, EXCLUDED)
    ds = IndexedDataset(TensorDataset(torch.arange(N)))
    loader = DataLoader(ds, batch_size=batch_size, sampler=ActiveSampler(tr, seed=2), drop_last=drop_last)
    a = len(ACTIVE)
    want_batches = a // batch_size if drop_last else math.ceil(a / batch_size)
    assert len(loader) == want_batches
    batches = [idx.tolist() for idx, (x,) in loader]
    assert len(batches) == want_batches
    assert all(len(b) == batch_size for b in batches[: a // batch_size])
    flat = [i for b in batches for i in b]
    assert len(flat) == (want_batches * batch_size if drop_last else a)
    assert len(set(flat)) == len(flat) and set(flat) <= set(ACTIVE)
    if not drop_last:
        assert sorted(flat) == ACTIVE


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("excluded", [EXCLUDED, EXCLUDED[:-1], [], list(range(N - 1))])
def test_distributed_two_ranks(shuffle: bool, excluded: List[int]) -> None:
    tr = tracker_with_excluded(N, excluded)
    active = [i for i in range(N) if i not in excluded]
    a = len(active)
    for drop_last in (False, True):
        ranks = [ActiveSampler(tr, seed=5, num_replicas=2, rank=r, drop_last=drop_last, shuffle=shuffle) for r in (0, 1)]
        outs = [list(s) for s in ranks]
        per = a // 2 if drop_last else math.ceil(a / 2)
        assert [len(o) for o in outs] == [per, per]
        assert [len(s) for s in ranks] == [per, per]
        union = outs[0] + outs[1]
        assert set(union) <= set(active)
        if drop_last:
            assert len(set(union)) == 2 * per  # disjoint
            assert len(set(active) - set(union)) == a % 2
        else:
            assert set(union) == set(active)  # covers all active
            assert len(union) - len(set(union)) == a % 2  # padding repeats one index when odd
        # interleaved, the ranks give the single-process order (cut or padded)
        single = list(ActiveSampler(tr, seed=5, shuffle=shuffle))
        inter = [x for pair in zip(*outs) for x in pair]
        assert inter == (single + single)[: 2 * per]


def test_distributed_rank_checks() -> None:
    tr = fast_tracker(4)
    with pytest.raises(ValueError, match="rank"):
        ActiveSampler(tr, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        ActiveSampler(tr, num_replicas=0, rank=0)


def test_survivors_keep_relative_order() -> None:
    tr_full = tracker_with_excluded(N, [])
    tr_cut = tracker_with_excluded(N, EXCLUDED)
    assert tr_full.epoch == tr_cut.epoch
    for e in range(3):
        full = ActiveSampler(tr_full, seed=11)
        cut = ActiveSampler(tr_cut, seed=11)
        full.set_epoch(e)
        cut.set_epoch(e)
        assert list(cut) == [i for i in full if i not in EXCLUDED]


def test_persistent_workers_reread_the_active_set() -> None:
    n = 24
    tr = fast_tracker(n)
    ds = IndexedDataset(TensorDataset(torch.arange(n).float()))
    loader = DataLoader(ds, batch_size=5, sampler=ActiveSampler(tr, seed=0), num_workers=2,
                        persistent_workers=True)
    plan = [set(), {0, 5, 6, 7}, {0, 5, 6, 7}, {5, 6}, {5, 6}]  # a loss of 0 masters (from the 2nd loss on)
    seen: List[Set[int]] = []
    for e, masters in enumerate(plan):
        want = set(range(n)) - set(tr.excluded_indices().tolist())
        assert len(loader) == math.ceil(len(want) / 5)
        got = []
        for idx, (x,) in loader:
            assert torch.equal(x, idx.float())
            got += idx.tolist()
        assert len(got) == len(set(got)) == len(want) and set(got) == want
        seen.append(set(got))
        # training losses for the active, scoring losses for the excluded
        tr.record(torch.tensor(got), torch.tensor([0.0 if i in masters else 1.0 for i in got]))
        sc = tr.indices_to_probe().tolist()
        if sc:
            tr.record_probe(torch.tensor(sc), torch.tensor([0.0 if i in masters else 1.0 for i in sc]))
        tr.step()
    assert seen[0] == seen[1] == set(range(n))
    assert seen[2] == seen[3] == set(range(n)) - {0, 5, 6, 7}  # excluded after a zero loss at epoch 1
    assert seen[4] == set(range(n)) - {5, 6}  # 0 and 7 came back (scored 1.0 at epoch 3)
