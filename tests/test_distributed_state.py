"""Ranks whose saved state differs refuse to train (issue 21): 2 CPU processes (gloo), file rendezvous.

One rank resumed at epoch 4 and the other fresh used to train on unequal shards (sampler
lengths [0, 19] and the like) with no error; now building the sampler raises on every rank,
naming the rank that differs.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ies import IES
from ies.distributed import DistributedIES, state_digest

N = 37
RULE = dict(threshold=0.02, order=1, window=2, m=1, probe_backoff=False)


def _losses(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    return 0.5 + idx.double() / 100 + torch.where(idx % 5 == 1, 1.0 / (epoch + 1), 0.0)


def _donor(epochs: int) -> dict:
    ies = IES(N, **RULE)
    for e in range(epochs):
        ies.record(ies.active_indices(), _losses(ies.active_indices(), e).float())
        ies.record_probe(ies.indices_to_probe(), _losses(ies.indices_to_probe(), e).float())
        ies.step()
    return ies.state_dict()


def _worker(rank: int, world: int, tmpdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/pg", rank=rank, world_size=world)
    try:
        at4, at5 = torch.load(f"{tmpdir}/at4.pt", weights_only=True), torch.load(f"{tmpdir}/at5.pt", weights_only=True)
        # one rank resumed, the other fresh: refused when the sampler is built, before any batch
        ies = DistributedIES(N, **RULE)
        if rank == 0:
            ies.load_state_dict(at4)
        with pytest.raises(ValueError, match=r"disagree on the epoch, excluded count, saved state: rank\(s\) \[1\] "
                                             r"differ from rank 0.*load the same checkpoint on every rank"):
            ies.sampler(seed=0)
        # the same checkpoint on both: equal shards, and an epoch trains and merges
        ies = DistributedIES(N, **RULE)
        ies.load_state_dict(at4)
        sampler = ies.sampler(seed=0)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(lengths, torch.tensor([len(sampler)]))
        assert lengths[0] == lengths[1] and 0 < int(lengths[0]) < N
        idx = torch.tensor(list(sampler))
        ies.record(idx, _losses(idx, 4).float())
        ies.record_probe(ies.indices_to_probe(), _losses(ies.indices_to_probe(), 4).float())
        ies.step()
        # a state loaded on one rank after the sampler was built: refused at the next merge
        ies = DistributedIES(N, **RULE)
        ies.load_state_dict(at4)
        sampler = ies.sampler(seed=0)
        if rank == 1:
            ies.load_state_dict(at5)
        with pytest.raises(ValueError, match=r"rank\(s\) \[1\] differ from rank 0"):
            ies.step()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_with_different_saved_state_refuse_to_train(tmp_path):
    at4, at5 = _donor(4), _donor(5)
    assert state_digest(_load(at4)) != state_digest(_load(at5))
    torch.save(at4, tmp_path / "at4.pt")
    torch.save(at5, tmp_path / "at5.pt")
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)


def _load(state: dict) -> IES:
    t = IES(N, **RULE)
    t.load_state_dict(state)
    return t


def test_state_digest_tells_states_apart_and_is_equal_for_equal_states():
    a, b = _load(_donor(4)), _load(_donor(4))
    assert state_digest(a) == state_digest(b)
    assert state_digest(a)[0] == 4
    b.excluded[0] = ~b.excluded[0]  # one sample's exclusion differs
    assert state_digest(a) != state_digest(b)
    c = _load(_donor(4))
    h = c.history
    h[3, -1] += 1e-3  # one loss differs
    c.history = h
    assert state_digest(a)[2] != state_digest(c)[2]
