"""DistributedIES and the ActiveSampler under 2 CPU processes (gloo), plus single-process checks.

One ``mp.spawn`` launch checks everything that needs two ranks (launches cost seconds). The
process group meets through a file in the test's own folder: no port to race for.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from ies import IndexedDataset, IES
from ies.distributed import DistributedIES, all_gather_records, merge_records, unwrap_model, world_info

N, BS, EPOCHS, RESUME_AT, SYNC_AT = 37, 4, 9, 4, 6
RULE = dict(threshold=0.02, order=1, window=2, m=1, probe_backoff=False)  # every excluded sample probed every epoch
BIG = 2**24 + 1  # not representable in float32: 2**24 + 1 -> 2**24


def loss_of(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """Deterministic per-sample losses (bf16 values): constants, decays, and jumps that re-include samples."""
    i = idx.double()
    base = 0.5 + i / 100
    decay = torch.where(idx % 5 == 1, 1.0 / (epoch + 1), 0.0)
    jump = torch.where((idx % 4 == 0) & (epoch >= 5), 1.0, 0.0)
    return (base + decay + jump).to(torch.bfloat16)


def score_forward(model, batch):
    return loss_of(batch[0], model.epoch_for_test)


def reference():
    """One process, fed the same per-sample losses: excluded set and stats after each epoch."""
    ies = IES(N, **RULE)
    out = []
    for e in range(EPOCHS):
        act = ies.active_indices()
        ies.record(act, loss_of(act, e))
        exc = ies.indices_to_probe()
        ies.record_probe(exc, loss_of(exc, e))
        ies.step()
        out.append(ies.excluded.clone())
    return out, ies


def _gather(t: torch.Tensor, world: int):
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return out


def _check_private_copy(parent: DistributedIES) -> None:
    # mp.spawn pickles CPU tensors into shared memory; each rank must get its own copy.
    owned = [parent.count, parent.excluded, parent._history.ring, parent._records.pending, parent._records.train]
    assert not any(t.is_shared() for t in owned)


def _check_large_indices(rank: int, world: int) -> None:
    # The wire format: int64 indices and float32 losses in separate tensors, exact.
    v = torch.tensor([0.75, 3.140625], dtype=torch.bfloat16)
    idx, val, src, extra = all_gather_records(torch.tensor([2**40 + 1 + rank, BIG]), v * (rank + 1),
                                              extra=torch.tensor([rank]))
    assert idx.tolist() == [2**40 + 1, BIG, 2**40 + 2, BIG] and val.dtype == torch.float32
    assert val.tolist() == [0.75, 3.140625, 1.5, 6.28125] and src.tolist() == [0, 0, 1, 1]
    assert extra.flatten().tolist() == [0, 1]
    # Through a tracker with N > 2**24 (dense state ~0.6 GB per rank): indices above 2**24 land exactly.
    ies = DistributedIES(2**24 + 5, threshold=0.1, order=0, window=1, m=1)
    mine = torch.tensor([BIG + 2 * rank, 7])  # 7 is recorded on both ranks (like sampler padding)
    ies.record(mine, torch.tensor([0.375 + rank, 0.5 + rank], dtype=torch.bfloat16))
    ies.sync()
    assert ies.pending_mask.sum() == 3
    assert ies.pending[BIG].item() == 0.375 and ies.pending[BIG + 2].item() == 1.375
    assert ies.pending[7].item() == 0.5  # the lowest rank's loss wins, on every rank
    assert ies.books.epoch["trained"] == 4  # counters summed over ranks
    ies.sync()  # idempotent
    assert ies.pending_mask.sum() == 3 and ies.books.epoch["trained"] == 4
    del ies


def _check_training(rank: int, world: int, tmpdir: str) -> None:
    ref_excluded, ref = reference()
    dataset = TensorDataset(torch.arange(N))
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    model.module.epoch_for_test = 0
    ies = DistributedIES(N, **RULE)
    seen_padding = 0
    for e in range(EPOCHS):
        if e == RESUME_AT:  # resume under DDP: rank 0 saves, every rank loads into a fresh tracker
            if rank == 0:
                torch.save(ies.state_dict(), os.path.join(tmpdir, "ies.pt"))
            dist.barrier()
            ies = DistributedIES(N, **RULE)
            ies.load_state_dict(torch.load(os.path.join(tmpdir, "ies.pt"), weights_only=True))
        sampler = ies.sampler(shuffle=True, seed=3)
        loader = DataLoader(IndexedDataset(dataset), sampler=sampler, batch_size=BS)
        counts = torch.zeros(N, dtype=torch.int64)
        yielded = 0
        for b, (idx, (x,)) in enumerate(loader):
            ies.record(idx, loss_of(x, e))
            counts[idx] += 1
            yielded += idx.numel()
            if e == SYNC_AT and b == 0:
                ies.sync()  # a mid-epoch merge (as before a checkpoint) must not double-count
        assert yielded == len(sampler)
        lens = _gather(torch.tensor([yielded]), world)
        assert all(int(t) == yielded for t in lens)  # every rank yields the same number of indices
        active = ~ies.excluded
        dist.all_reduce(counts)
        assert counts[~active].sum() == 0  # excluded samples are not trained
        assert (counts[active] >= 1).all()  # every active sample is trained
        padding = yielded * world - int(active.sum())
        assert int(counts.sum()) - int(active.sum()) == padding and int((counts - 1).clamp(min=0).sum()) == padding
        seen_padding += padding
        model.module.epoch_for_test = e
        ies.sync()
        want_here = len(ies.indices_to_probe()[rank::world])
        probed_here = ies.probe(model, dataset, forward=score_forward, batch_size=5)
        assert probed_here == want_here  # the probe pass is split
        stats = ies.step()
        assert stats.trained == yielded * world and stats.probed == int((~active).sum())
        masks = _gather(ies.excluded.to(torch.uint8), world)
        assert torch.equal(masks[0], masks[1])  # ranks agree exactly
        assert torch.equal(ies.excluded, ref_excluded[e]), e  # and with the single-process run
        all_stats = [None] * world
        dist.all_gather_object(all_stats, stats.counts())
        assert all_stats[0] == all_stats[1]
    assert seen_padding > 0  # N is odd: padding happened and was counted
    assert int(ref.times_reincluded.sum()) > 0 and int(ref.excluded.sum()) > 0  # the run exercised both ways
    assert torch.equal(ies.history.nan_to_num(-1), ref.history.nan_to_num(-1))
    assert torch.equal(ies.times_reincluded, ref.times_reincluded)


def _check_mismatch_raises(rank: int) -> None:
    """Ranks built with different sampler seeds (or rules) refuse when the sampler is built, on every rank."""
    for kw, seed, what in ((RULE, 3 + rank, "sampler seed"), ({**RULE, "threshold": 0.02 * (rank + 1)}, 3, "rule settings")):
        ies = DistributedIES(N, **kw)
        with pytest.raises(ValueError, match=f"ranks disagree on the {what}: rank\\(s\\) \\[1\\] differ"):
            ies.sampler(seed=seed)


def _worker(rank: int, world: int, tmpdir: str, parent: DistributedIES) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/pg", rank=rank, world_size=world)
    try:
        assert world_info() == (world, rank)
        _check_private_copy(parent)
        _check_training(rank, world, tmpdir)
        _check_mismatch_raises(rank)
        _check_large_indices(rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_gloo(tmp_path):
    parent = DistributedIES(N, **RULE)
    mp.spawn(_worker, args=(2, str(tmp_path), parent), nprocs=2, join=True)


# ----------------------------------------------------------------- single process


def test_merge_records_lowest_rank_wins():
    idx, val = merge_records(torch.tensor([5, 2, 5, 9, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert idx.tolist() == [2, 5, 9] and val.tolist() == [2.0, 1.0, 4.0]
    e_idx, e_val = merge_records(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert e_idx.numel() == 0 and e_val.numel() == 0


def test_single_process_is_the_plain_tracker():
    assert world_info() == (1, 0)
    a, b = DistributedIES(N, **RULE), IES(N, **RULE)
    for e in range(5):
        for t in (a, b):
            act = t.active_indices()
            t.record(act, loss_of(act, e))
            t.record_probe(t.indices_to_probe(), loss_of(t.indices_to_probe(), e))
        assert a.step().counts() == b.step().counts()
    assert len(a.sampler()) == a.num_active
    idx, val, src, extra = all_gather_records(torch.tensor([BIG]), torch.tensor([0.5], dtype=torch.bfloat16))
    assert idx.tolist() == [BIG] and val.dtype == torch.float32 and src.tolist() == [0] and extra.shape == (1, 0)
    net = torch.nn.Linear(2, 2)
    assert unwrap_model(torch.nn.DataParallel(net)) is net
    with pytest.raises(ValueError, match="int64"):
        all_gather_records(torch.tensor([1.0]), torch.tensor([1.0]))


# ----------------------------------------------------------------- bytes on the wire
META_BYTES = 8 * (1 + 4 + 1 + 1)  # per merge: pair count, 4 counter deltas, the bad-record and state-loaded flags
DIGEST_BYTES = 8 * (1 + 6)  # once per tracker: pair count (0), rule CRC, dataset size, sampler seed, state digest (3)


class _SendCounter:
    """Wraps ``dist.all_gather``: bytes of the tensor this rank sends in each call, while ``on``."""

    def __init__(self) -> None:
        self.orig, self.sent, self.on = dist.all_gather, [], True
        dist.all_gather = self

    def __call__(self, out, tensor, *args, **kwargs):
        if self.on:
            self.sent.append(tensor.numel() * tensor.element_size())
        return self.orig(out, tensor, *args, **kwargs)

    def take(self) -> list:
        out, self.sent = self.sent, []
        return out


def _max_over_ranks(n: int, counter: _SendCounter, world: int) -> int:
    counter.on = False
    got = _gather(torch.tensor([n]), world)
    counter.on = True
    return max(int(t) for t in got)


def _merge_bytes(pairs: int) -> list:
    """What one merge sends per rank: metadata, then (if any rank has pairs) indices and losses."""
    return [META_BYTES] + ([8 * pairs, 4 * pairs] if pairs else [])


def _check_bytes_per_epoch(rank: int, world: int) -> None:
    """Engine order (records, probe(), step()): each merge sends only the pairs recorded since the last."""
    counter = _SendCounter()
    try:
        dataset = TensorDataset(torch.arange(N))
        model = torch.nn.Linear(1, 1)
        ies = DistributedIES(N, **RULE)
        total_own = total_sent = 0
        for e in range(EPOCHS):
            loader = DataLoader(IndexedDataset(dataset), sampler=ies.sampler(shuffle=True, seed=3), batch_size=BS)
            trained = set()
            for idx, (x,) in loader:
                ies.record(idx, loss_of(x, e))
                trained.update(idx.tolist())
            model.epoch_for_test = e
            probed = ies.probe(model, dataset, forward=score_forward, batch_size=5)
            ies.step()
            sent = counter.take()
            want = ([DIGEST_BYTES] if e == 0 else []) + _merge_bytes(_max_over_ranks(len(trained), counter, world))
            want += _merge_bytes(_max_over_ranks(probed, counter, world))
            assert sent == want, (e, sent, want)  # the gathers and their sizes, in order
            total_own += 12 * (len(trained) + probed)
            total_sent += sum(sent)
        # all of it: own pairs once (x 12 bytes), padded to the largest rank, plus 96 bytes of metadata per epoch
        assert total_sent <= total_own + EPOCHS * (2 * META_BYTES + 12 * 2) + DIGEST_BYTES
    finally:
        dist.all_gather = counter.orig


def _bytes_worker(rank: int, world: int, tmpdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/pg", rank=rank, world_size=world)
    try:
        _check_bytes_per_epoch(rank, world)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_each_merge_sends_only_new_records(tmp_path):
    mp.spawn(_bytes_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
