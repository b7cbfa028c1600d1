"""Small-Loss & Rescale against the reference InfoBatch code (NUS-HPC-AI-Lab/InfoBatch,
``infobatch/infobatch.py``): the pruned count, the prune-ratio cap, the rescaling weight, the
annealing epochs, and the documented differences (unseen samples, non-finite losses, seeding)."""

from __future__ import annotations

import math
from typing import List

import numpy as np
import pytest
import torch

from ies.policies import build_policy
from ies.policies.infobatch import MAX_PRUNE_RATIO, keep_ratio, num_kept, well_learned_mask


def reference_num_kept(n: int, prune_ratio: float) -> int:
    """The reference code's two lines, verbatim: its keep ratio, then the size of its draw."""
    keep = min(1.0, max(1e-1, 1.0 - prune_ratio))
    return int(keep * n)


def close(p, losses: torch.Tensor) -> dict:
    """Train the epoch's mask with the given per-sample losses and close the epoch."""
    idx = torch.nonzero(p.train_mask()).flatten()
    p.record(idx, losses[idx])
    return p.close_epoch()


def policy_with_below_mean(n: int, below: int, prune_ratio: float, **kw):
    """A policy after one epoch in which exactly ``below`` of ``n`` samples are below the mean loss."""
    p = build_policy("infobatch", n, total_epochs=10, prune_ratio=prune_ratio, delta=1.0, **kw)
    close(p, (torch.arange(n) >= below).float())  # `below` zeros, then ones: the mean is in (0, 1)
    return p


# ----------------------------------------------------------------------------- the pruned count
# (below-mean count n, prune ratio r, pruned). The reference keeps int(keep_ratio * n), so it prunes
# ceil(r * n) up to float rounding; round(r * n) (banker's) would be one fewer in the rows marked *.
PRUNED = [
    (0, 0.5, 0),
    (1, 0.5, 1),     # * round(0.5) = 0
    (5, 0.5, 3),     # * round(2.5) = 2
    (7, 0.5, 4),     # round(3.5) = 4 too
    (33, 0.1, 4),    # * round(3.3) = 3
    (10, 0.7, 7),    # 1 - 0.7 = 0.30000000000000004; x10 = 3.0000000000000004 -> keep 3
    (10, 0.8, 9),    # * 1 - 0.8 = 0.19999999999999996; x10 = 1.9999999999999996 -> keep 1 (exact: 2)
    (90, 0.3, 28),   # * 0.7 x 90 = 62.99999999999999 -> keep 62 (exact: 63)
    (10, 0.9, 9),    # the clamp: 1 - 0.9 = 0.09999999999999998 -> keep ratio 0.1 -> keep 1
    (7, 0.9, 7),     # int(0.1 x 7) = 0: all pruned, as in the reference
    (50, 0.0, 0),
]


@pytest.mark.parametrize("n, r, pruned", PRUNED)
def test_num_kept_is_the_reference_arithmetic(n: int, r: float, pruned: int) -> None:
    assert n - num_kept(n, r) == pruned
    assert num_kept(n, r) == reference_num_kept(n, r)


@pytest.mark.parametrize("n, r, pruned", [row for row in PRUNED if row[0] > 0])
def test_policy_prunes_the_reference_count_of_below_mean_samples(n: int, r: float, pruned: int) -> None:
    p = policy_with_below_mean(n + 5, n, r)
    mask = p.train_mask()
    assert int((~mask).sum()) == pruned
    assert bool(mask[n:].all())  # only below-mean samples are pruned
    stats = close(p, torch.zeros(n + 5))
    assert stats["pruned"] == pruned and stats["excluded"] == pruned


def test_pruned_count_is_ceil_not_round() -> None:
    # 5 below the mean at r = 0.5: the reference keeps int(2.5) = 2 and prunes 3; round(2.5) = 2 would prune 2.
    p = policy_with_below_mean(8, 5, 0.5)
    assert int((~p.train_mask()).sum()) == math.ceil(0.5 * 5) == 3 != round(0.5 * 5)


# ----------------------------------------------------------------------------- the cap and the weight
@pytest.mark.parametrize("r, weight", [(0.5, 2.0), (0.7, 1 / 0.30000000000000004), (0.9, 10.0)])
def test_kept_below_mean_samples_get_the_reference_weight(r: float, weight: float) -> None:
    n, below = 40, 30
    p = policy_with_below_mean(n, below, r)
    w, mask = p.batch_weights(torch.arange(n)), p.train_mask()
    kept_low = mask[:below]
    assert int(kept_low.sum()) == reference_num_kept(below, r) > 0
    expected = torch.tensor(1.0 / keep_ratio(r), dtype=torch.float32)
    assert torch.equal(w[:below][kept_low], expected.expand(int(kept_low.sum())))
    assert float(expected) == pytest.approx(weight)
    assert torch.equal(w[below:], torch.ones(n - below))  # above the mean: weight 1


def test_cap_is_the_reference_keep_ratio_floor() -> None:
    assert MAX_PRUNE_RATIO == 0.9
    assert keep_ratio(MAX_PRUNE_RATIO) == 0.1  # not 1 - 0.9 = 0.09999999999999998
    assert build_policy("infobatch", 10, total_epochs=2, prune_ratio=0.9).prune_ratio == 0.9


@pytest.mark.parametrize("r", [0.9000001, 0.95, 0.99, 1.0, 1.5])
def test_prune_ratio_above_the_cap_is_refused_with_the_reason(r: float) -> None:
    with pytest.raises(ValueError) as err:
        build_policy("infobatch", 10, total_epochs=2, prune_ratio=r)
    msg = str(err.value)
    for part in ("prune_ratio", "[0.0, 0.9]", "1/(1 - prune_ratio)", "x10 at 0.9", repr(r)):
        assert part in msg, (part, msg)


@pytest.mark.parametrize("r", [-0.1, float("nan"), True, "0.5", None])
def test_prune_ratio_that_is_not_a_share_is_refused(r) -> None:
    with pytest.raises(ValueError, match="prune_ratio must be a number in"):
        build_policy("infobatch", 10, total_epochs=2, prune_ratio=r)


# ----------------------------------------------------------------------------- annealing
# (total epochs T, delta, pruning epochs). The reference's sampler counts epochs from 1 and prunes
# while that count is <= T * delta: the first floor(T * delta) epochs. Its code, transcribed and
# driven with one iter() per epoch, pruned epochs 0-16 of T = 20 and 0-13 of T = 16 at delta 0.875.
ANNEAL = [(20, 0.875, 17), (16, 0.875, 14), (4, 0.875, 3), (8, 1.0, 8), (3, 0.3, 0), (200, 0.875, 175)]


@pytest.mark.parametrize("T, delta, pruning_epochs", ANNEAL)
def test_the_first_floor_delta_T_epochs_prune(T: int, delta: float, pruning_epochs: int) -> None:
    p = build_policy("infobatch", 4, total_epochs=T, prune_ratio=0.5, delta=delta)
    assert p.num_pruning_epochs == pruning_epochs
    assert [p.pruning(e) for e in range(T)] == [e < pruning_epochs for e in range(T)]


def test_annealing_trains_everything_with_weight_one() -> None:
    T, n = 20, 40  # delta * T = 17.5: the reference keeps its last up-weights through epochs 17-19; here weights are 1
    p = build_policy("infobatch", n, total_epochs=T, seed=3, prune_ratio=0.5)
    rows: List[dict] = []
    for e in range(T):
        w = p.batch_weights(torch.arange(n))
        if e < 17:
            assert e == 0 or bool((w > 1).any())
        else:
            assert bool(p.train_mask().all()) and torch.equal(w, torch.ones(n))
        rows.append(close(p, torch.rand(n, generator=torch.Generator().manual_seed(e))))
    assert [r["pruned"] > 0 for r in rows] == [False] + [True] * 16 + [False] * 3
    assert [r["annealing"] for r in rows] == [False] * 17 + [True] * 3


# ----------------------------------------------------------------------------- documented differences
def test_unseen_samples_are_kept_and_left_out_of_the_mean() -> None:
    # The reference would score the 4 unseen samples 3.0 and count them in the mean (3.0 > every seen loss here,
    # so its mean would be 1.47 instead of 0.45 and every seen sample would be below it).
    n = 10
    p = build_policy("infobatch", n, total_epochs=10, prune_ratio=0.5, delta=1.0)
    p.record(torch.arange(6), torch.tensor([0.1, 0.2, 0.3, 0.6, 0.7, 0.8]))
    p.close_epoch()
    assert torch.equal(torch.nonzero(p.well_learned()).flatten(), torch.tensor([0, 1, 2]))
    assert bool(p.train_mask()[6:].all())
    assert int((~p.train_mask()).sum()) == 2  # 3 below the mean: keep int(1.5) = 1


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_losses_are_left_out_of_the_mean_and_kept(bad: float) -> None:
    scores = torch.tensor([0.1, 0.2, 0.6, 0.7, bad])
    seen = torch.ones(5, dtype=torch.bool)
    assert torch.equal(well_learned_mask(scores, seen), torch.tensor([True, True, False, False, False]))
    p = build_policy("infobatch", 5, total_epochs=10, prune_ratio=0.5, delta=1.0)
    close(p, scores)
    assert bool(p.train_mask()[4]) and int((~p.train_mask()).sum()) == 1


def test_draw_is_seeded_locally_and_leaves_global_generators_alone() -> None:
    n = 200
    np_before, torch_before = np.random.get_state()[1].copy(), torch.random.get_rng_state()
    first, again, other = (policy_with_below_mean(n, 100, 0.5, seed=s).train_mask() for s in (0, 0, 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)  # the reference's draw depends on the epoch only, not the seed
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert torch.equal(torch.random.get_rng_state(), torch_before)
