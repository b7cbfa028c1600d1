"""The mastery rule against an independent, deliberately slow pure-Python reference.

The reference below is written from the rule's text only (lists of floats, explicit
binomial coefficients, explicit window loops); it shares no code with ``ies``.

Exactness: every finite loss in the random traces lies on the grid ``j * 2**-14`` in
``[0, 8)``. On that grid order-k differences and window sums are exact in float32 and
float64 alike, so the only rounding is the final division by ``w`` (and the sum of the
last ``m`` averages). A score can then only be a multiple of ``2**-14 / w``; the
thresholds below are chosen away from those multiples, and the reference asserts that
no judged score lies within 1e-6 (relative) of the threshold, so "score < threshold"
is decided identically by the float32 tracker and the float64 reference.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from ies import IES, IESWarning
from ies.criterion import criterion_values, history_length, kth_difference, mastered_mask, moving_average_abs

GRID = 2.0 ** -14
THRESHOLDS = (0.0, 1e-3, 1e-2, 0.07)  # 0: no removal; others are not multiples of GRID / w for w in 1,2,3,5


# --------------------------------------------------------------------------- reference
def ref_difference(seq: Sequence[float], k: int) -> List[float]:
    """Order-k differences with explicit binomial coefficients, oldest first."""
    out = []
    for i in range(k, len(seq)):  # the difference ending at loss i
        total = 0.0
        for j in range(k + 1):  # sum_j (-1)^j C(k, j) L(i - j)
            total += ((-1) ** j) * math.comb(k, j) * seq[i - j]
        out.append(total)
    return out


def ref_moving_averages(diffs: Sequence[float], w: int) -> List[float]:
    out = []
    for start in range(len(diffs) - w + 1):
        s = 0.0
        for i in range(start, start + w):
            s += abs(diffs[i])
        out.append(s / w)
    return out


def ref_score(losses: Sequence[float], k: int, w: int, m: int) -> float:
    """The criterion of a sample with recorded losses ``losses`` (all of them, oldest first)."""
    need = k + w + m
    if len(losses) < need:
        return math.inf  # not enough history: never mastered
    last = list(losses[-need:])  # losses giving the last w + m differences
    for x in last:
        if not math.isfinite(x):
            return math.inf  # a non-finite loss in the history: not mastered
    diffs = ref_difference(last, k)
    assert len(diffs) == w + m
    avgs = ref_moving_averages(diffs, w)
    assert len(avgs) == m + 1
    total = 0.0
    for a in avgs[len(avgs) - m:]:
        total += a
    return total


class Reference:
    """Per-sample loss lists plus the excluded set, one epoch at a time.

    ``step`` may be given the epoch's scores when several references share one history
    (the scores do not depend on the threshold)."""

    def __init__(self, n: int, k: int, w: int, m: int, threshold: float) -> None:
        self.n, self.k, self.w, self.m, self.threshold = n, k, w, m, threshold
        self.losses: List[List[float]] = [[] for _ in range(n)]
        self.excluded = [False] * n

    def add(self, epoch_losses: Dict[int, float]) -> List[float]:
        for i, v in epoch_losses.items():
            self.losses[i].append(v)
        return [ref_score(self.losses[i], self.k, self.w, self.m) for i in range(self.n)]

    def step(self, epoch_losses: Dict[int, float], scores: Optional[List[float]] = None) -> dict:
        if scores is None:
            scores = self.add(epoch_losses)
        mastered = []
        for i in range(self.n):
            s = scores[i]
            if math.isfinite(s) and self.threshold > 0:
                assert abs(s - self.threshold) > 1e-6 * self.threshold, "trace produced a tie with the threshold"
            mastered.append(s < self.threshold)
        nxt = [bool(x) and self.threshold > 0 for x in mastered]
        stats = {
            "excluded": sum(self.excluded),
            "mastered": sum(mastered),
            "newly_excluded": sum(1 for i in range(self.n) if nxt[i] and not self.excluded[i]),
            "reincluded": sum(1 for i in range(self.n) if self.excluded[i] and not nxt[i]),
            "nonfinite": sum(1 for v in epoch_losses.values() if not math.isfinite(v)),
        }
        self.excluded = nxt
        return stats


# --------------------------------------------------------------------------- traces
def q(x: float) -> float:
    """Snap to the exact grid in [0, 8)."""
    return min(max(round(x / GRID), 0), int(8 / GRID) - 1) * GRID


def make_traces(n: int, epochs: int, seed: int, *, clean: int) -> List[List[Optional[float]]]:
    """``n`` loss traces of ``epochs`` values; ``None`` is an epoch without a recorded loss.

    The first ``clean`` samples are the designed ones (no missing epoch, no non-finite
    value): each decreases, plateaus long enough to be judged, rises again (so it is
    re-included) and plateaus again.
    """
    rng = random.Random(seed)
    traces: List[List[Optional[float]]] = []
    for i in range(n):
        kind = "rise" if i < clean else rng.choice(["plateau", "plateau0", "noisy", "rise", "spikes", "random"])
        start = rng.uniform(1.0, 4.0)
        rate = rng.uniform(0.3, 0.7)
        if kind == "rise":
            # decay (0..1), plateau (2..15), rise (16..18), plateau again (19..)
            level = 0.0 if i % 2 == 0 else q(start * rate)  # order 0 masters only the zero plateaus
            t = [q(start), q(start * rate)] + [level] * 14 + [q(level + 0.5 * j) for j in (1, 2, 3)]
            t += [q(level + 1.5)] * (epochs - len(t))
        elif kind in ("plateau", "plateau0"):
            p = rng.randint(2, 12)
            vals = [q(start * rate ** e) for e in range(p)]
            level = 0.0 if kind == "plateau0" else vals[-1]
            t = vals + [level] * (epochs - p)
        elif kind == "noisy":
            base = q(rng.uniform(0.0, 2.0))
            amp = rng.choice([0, 1, 2, 3, 5, 17, 200])  # in grid units: around every threshold
            t = [q(base + rng.randint(-amp, amp) * GRID) if base > 0.1 else rng.randint(0, amp) * GRID
                 for _ in range(epochs)]
        elif kind == "spikes":
            level = q(rng.uniform(0.0, 1.0)) if rng.random() < 0.7 else 0.0
            t = [level] * epochs
            for e in rng.sample(range(epochs), 3):
                t[e] = q(level + rng.choice([GRID, 7 * GRID, 0.01, 0.5]))
        else:
            t = [q(rng.uniform(0, 8)) for _ in range(epochs)]
        assert len(t) == epochs
        trace: List[Optional[float]] = list(t)
        if i >= clean:
            for e in range(epochs):
                r = rng.random()
                if r < 0.10:
                    trace[e] = None  # no loss recorded this epoch
                elif r < 0.13:
                    trace[e] = rng.choice([math.nan, math.inf, -math.inf])
        traces.append(trace)
    return traces


# --------------------------------------------------------------------------- driver
def run_epoch(tracker: IES, values: Dict[int, float], rng: random.Random, score: bool = True) -> None:
    """Record as a training loop would: active samples through ``record`` in shuffled
    batches, excluded ones through ``record_probe`` (the scoring pass)."""
    excluded = tracker.excluded.tolist()
    trained = [i for i in values if not excluded[i]]
    scored = [i for i in values if excluded[i]]
    rng.shuffle(trained)
    for s in range(0, len(trained), 37):
        b = trained[s : s + 37]
        tracker.record(torch.tensor(b), torch.tensor([values[i] for i in b], dtype=torch.float32))
    if score and scored:
        for s in range(0, len(scored), 50):
            b = scored[s : s + 50]
            tracker.record_probe(torch.tensor(b), torch.tensor([values[i] for i in b], dtype=torch.float32))


N, EPOCHS, CLEAN = 200, 25, 40


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("w", [1, 2, 3, 5])
@pytest.mark.parametrize("order", [0, 1, 2, 3])
def test_tracker_matches_reference(order: int, w: int, m: int, seed: int) -> None:
    traces = make_traces(N, EPOCHS, seed=1000 * seed + 17 * order + 5 * w + m, clean=CLEAN)
    trackers = {d: IES(N, threshold=d, order=order, window=w, m=m) for d in THRESHOLDS}
    refs = {d: Reference(N, order, w, m, d) for d in THRESHOLDS}
    history = Reference(N, order, w, m, 0.0)  # the shared loss lists (scores do not depend on d)
    rng = random.Random(seed)
    reincluded = {d: 0 for d in THRESHOLDS}
    excluded_epochs = {d: 0 for d in THRESHOLDS}
    clean_reincluded = {d: 0 for d in THRESHOLDS}
    for e in range(EPOCHS):
        values = {i: trace[e] for i, trace in enumerate(traces) if trace[e] is not None}
        scores = history.add(values)
        for d in THRESHOLDS:
            tr, ref = trackers[d], refs[d]
            was = list(ref.excluded)
            run_epoch(tr, values, rng)
            stats = tr.step()
            want = ref.step(values, scores)
            got_excluded = tr.excluded.tolist()
            assert got_excluded == ref.excluded, (
                f"epoch {e} threshold {d}: differs at "
                f"{[i for i in range(N) if got_excluded[i] != ref.excluded[i]][:10]}"
            )
            for key, val in want.items():
                assert getattr(stats, key) == val, (e, d, key)
            assert stats.next_active == N - sum(ref.excluded)
            reincluded[d] += stats.reincluded
            excluded_epochs[d] += stats.excluded
            clean_reincluded[d] += sum(1 for i in range(CLEAN) if was[i] and not ref.excluded[i])
        # the criterion itself, compared with a float tolerance
        s_got = trackers[THRESHOLDS[0]].criterion().tolist()
        for i in range(N):
            if math.isinf(scores[i]):
                assert math.isinf(s_got[i]), (e, i)
            else:
                assert math.isclose(s_got[i], scores[i], rel_tol=1e-6, abs_tol=1e-9), (e, i, s_got[i], scores[i])
    assert excluded_epochs[0.0] == 0 and reincluded[0.0] == 0  # threshold 0: no removal at all
    for d in THRESHOLDS[1:]:
        assert excluded_epochs[d] > 0, f"threshold {d}: nothing was ever excluded, the test would be vacuous"
        assert reincluded[d] > 0, f"threshold {d}: nothing was ever re-included"
        assert clean_reincluded[d] >= CLEAN // 2, f"threshold {d}: designed rising traces were not re-included"


def run_probed_epoch(tr: IES, values: Dict[int, float], rng: random.Random) -> List[int]:
    """Train the active samples that have a value; probe exactly what the tracker asks for."""
    excluded = tr.excluded.tolist()
    run_epoch(tr, {i: v for i, v in values.items() if not excluded[i]}, rng, score=False)
    asked = tr.indices_to_probe().tolist()
    got = [i for i in asked if i in values]
    if got:
        tr.record_probe(torch.tensor(got), torch.tensor([values[i] for i in got], dtype=torch.float32))
    return asked


@pytest.mark.parametrize("probe_every", [2, 3])
@pytest.mark.parametrize("order,w,m", [(2, 3, 1), (1, 2, 2), (0, 1, 1), (3, 5, 3)])
def test_staggered_probing_matches_reference(order: int, w: int, m: int, probe_every: int) -> None:
    """Each excluded sample is probed when (index + epoch) % r == 0; unprobed epochs add nothing to its
    history (so it stays excluded); the feedback loop matches the reference fed the same measurements."""
    traces = make_traces(N, EPOCHS, seed=99 + order + probe_every, clean=CLEAN)
    d = 1e-2
    tr = IES(N, threshold=d, order=order, window=w, m=m, probe_every=probe_every, probe_backoff=False)
    ref = Reference(N, order, w, m, d)
    rng = random.Random(3)
    total_re = 0
    for e in range(EPOCHS):
        values = {i: t[e] for i, t in enumerate(traces) if t[e] is not None}
        was = list(ref.excluded)
        asked = run_probed_epoch(tr, values, rng)
        due = [i for i in range(N) if was[i] and (i + e) % probe_every == 0]
        missed = [i for i in range(N) if not was[i] and i not in values]  # active, no training loss
        assert asked == sorted(due + missed), e
        measured = {i: v for i, v in values.items() if not was[i] or (i + e) % probe_every == 0}
        stats = tr.step()
        ref.step(measured)
        assert tr.excluded.tolist() == ref.excluded, e
        for i in range(N):  # an excluded sample not due this epoch cannot come back
            if was[i] and (i + e) % probe_every:
                assert ref.excluded[i]
        total_re += stats.reincluded
    assert total_re > 0


def test_staggered_probing_probes_each_excluded_sample_once_per_r_epochs() -> None:
    n, r = 30, 5
    tr = IES(n, threshold=1.0, probe_every=r, probe_backoff=False)
    probes = {i: [] for i in range(n)}
    for e in range(20):
        act = tr.active_mask.nonzero().flatten()
        tr.record(act, torch.zeros(act.numel()))
        idx = tr.indices_to_probe()
        for i in idx.tolist():
            probes[i].append(e)
        tr.record_probe(idx, torch.zeros(idx.numel()))
        tr.step()
    # everyone is excluded from epoch 6 on (constant losses): probed exactly every r epochs, spread evenly
    for i, es in probes.items():
        late = [e for e in es if e >= 6]
        assert all(b - a == r for a, b in zip(late, late[1:])), (i, late)
        assert len(late) in (2, 3)
    per_epoch = [sum(e in es for es in probes.values()) for e in range(6, 20)]
    assert per_epoch == [n // r] * len(per_epoch)  # flat cost, no spike


def test_backoff_doubles_and_resets() -> None:
    """A sample that stays excluded is probed after 1, 2, 4, 8, 8 epochs; re-included, it starts over."""
    n = 1
    tr = IES(n, threshold=0.5, probe_backoff=True, probe_max_interval=8)
    probed_at = []
    for e in range(40):
        loss = 5.0 if 24 <= e < 27 else 1.0  # a bump in epochs 24-26 re-includes it
        if not bool(tr.excluded[0]):
            tr.record(torch.tensor([0]), torch.tensor([loss]))
        elif tr.indices_to_probe().numel():
            probed_at.append(e)
            tr.record_probe(torch.tensor([0]), torch.tensor([loss]))
        tr.step()
    first = 6  # judged after 6 losses (epochs 0-5): excluded from epoch 6
    want = [first, first + 2, first + 6, first + 14]  # intervals 1 (first), 2, 4, 8
    assert probed_at[:4] == want
    assert probed_at[4] == want[3] + 8  # capped at 8: epoch 28, after the bump (24-26)
    assert tr.times_reincluded[0] == 0  # the bump fell between probes: back-off missed it (what the benchmark counts)


# --------------------------------------------------------------------------- pure functions
def test_kth_difference_table() -> None:
    h = torch.tensor([[1.0, 4.0, 9.0, 16.0, 25.0], [2.0, 1.0, 0.0, 5.0, -3.0]])
    assert torch.equal(kth_difference(h, 0), h)
    assert torch.equal(kth_difference(h, 1), torch.tensor([[3.0, 5.0, 7.0, 9.0], [-1.0, -1.0, 5.0, -8.0]]))
    assert torch.equal(kth_difference(h, 2), torch.tensor([[2.0, 2.0, 2.0], [0.0, 6.0, -13.0]]))
    assert torch.equal(kth_difference(h, 3), torch.tensor([[0.0, 0.0], [6.0, -19.0]]))
    # against the binomial formula of the reference
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-50, 50, (7, 11), generator=g).double()
    for k in range(4):
        want = torch.tensor([ref_difference(row, k) for row in x.tolist()], dtype=torch.float64)
        assert torch.equal(kth_difference(x, k), want)


def test_moving_average_abs_table() -> None:
    d = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    assert torch.equal(moving_average_abs(d, 1), torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert torch.equal(moving_average_abs(d, 2), torch.tensor([[1.5, 2.5, 3.5]]))
    assert torch.allclose(moving_average_abs(d, 3), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(moving_average_abs(d, 4), torch.tensor([[2.5]]))


@pytest.mark.parametrize(
    "history,order,w,m,want",
    [
        # geometric decay: 2nd diffs .25 .125 .0625 .03125; last window of 3 -> .21875 / 3
        ([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125], 2, 3, 1, 0.21875 / 3),
        # same history, m=2 needs one more loss: order 1, w=3, m=2 -> diffs .5 .25 .125 .0625 .03125
        ([1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125], 1, 3, 2, (0.4375 + 0.21875) / 3),
        # order 0: average of |loss| over the last window
        ([5.0, -1.0, 2.0, -3.0], 0, 2, 2, (1.5 + 2.5)),
        # order 3 of a quadratic is 0
        ([1.0, 4.0, 9.0, 16.0, 25.0], 3, 1, 1, 0.0),
        # order 3 of a cubic: constant 6
        ([0.0, 1.0, 8.0, 27.0, 64.0, 125.0], 3, 2, 1, 6.0),
        # plateau: every difference is 0
        ([0.7] * 6, 2, 3, 1, 0.0),
        # the oldest difference only feeds the first moving average (not summed for m=1)
        ([0.0, 100.0, 100.0, 100.0, 100.0], 1, 3, 1, 0.0),
    ],
)
def test_criterion_values_table(history, order, w, m, want) -> None:
    h = torch.tensor([history], dtype=torch.float64)
    got = criterion_values(h, torch.tensor([len(history)]), order=order, window=w, m=m)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    assert ref_score(history, order, w, m) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_criterion_values_docstring_example() -> None:
    h = torch.tensor([[1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]])
    assert criterion_values(h, torch.tensor([6]), order=2, window=3, m=1).item() == pytest.approx(0.21875 / 3, rel=1e-6)


def test_score_is_inf_without_full_history_or_with_nonfinite() -> None:
    h = torch.zeros(4, 6)
    h[2, 0] = float("nan")  # the oldest loss is outside every summed average but still blocks
    h[3, 5] = float("inf")
    s = criterion_values(h, torch.tensor([6, 5, 9, 9]), order=2, window=3, m=1)
    assert s[0].item() == 0.0
    assert math.isinf(s[1]) and math.isinf(s[2]) and math.isinf(s[3])
    assert mastered_mask(h, torch.tensor([6, 5, 9, 9]), threshold=1e-3, order=2, window=3, m=1).tolist() == [
        True, False, False, False,
    ]


def test_history_length_and_shape_check() -> None:
    assert history_length(2, 3, 1) == 6
    assert history_length(0, 1, 1) == 2
    assert history_length(3, 5, 3) == 11
    with pytest.raises(ValueError, match="need 6"):
        criterion_values(torch.zeros(1, 5), torch.tensor([5]), order=2, window=3, m=1)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("w,m", [(1, 1), (3, 1), (2, 3), (5, 2)])
def test_first_judged_after_exactly_k_plus_w_plus_m_losses(order: int, w: int, m: int) -> None:
    """A sample with a perfect plateau (loss 0) is mastered at the first step after which it
    has recorded k + w + m losses, not one earlier; epochs without a loss do not count."""
    need = order + w + m
    n = 3
    tr = IES(n, threshold=1e-3, order=order, window=w, m=m)
    recorded = [0] * n
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for e in range(need + 4):
            idx = [0] + ([1] if e % 2 == 0 else []) + [2]  # sample 1 misses every other epoch
            out = [i for i in idx if tr.excluded[i]]  # measured by the probe pass, as the loop would
            trained = [i for i in idx if not tr.excluded[i]]
            tr.record(torch.tensor(trained, dtype=torch.long), torch.zeros(len(trained)))
            tr.record_probe(torch.tensor(out, dtype=torch.long), torch.zeros(len(out)))
            for i in idx:
                recorded[i] += 1
            tr.step()
            ex = tr.excluded.tolist()
            for i in range(n):
                assert ex[i] == (recorded[i] >= need), (e, i, recorded[i])
    # the only complaint: an epoch in which sample 1 was active, missing, and nobody else trained
    assert all(issubclass(w.category, IESWarning) and "no training loss was recorded" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    # the defaults: first judged after six losses
    d = IES(1)
    for t in range(1, 7):
        d.record(torch.tensor([0]), torch.tensor([0.5]))
        d.step()
        assert bool(d.excluded[0]) == (t == 6)


@pytest.mark.parametrize("order,w,m", [(2, 3, 1), (0, 1, 1), (3, 2, 3)])
def test_dense_history_path_matches_reference(monkeypatch, order: int, w: int, m: int) -> None:
    """The device (non-CPU) path of the history update, forced on CPU, gives the same result."""
    commit = IES._commit
    monkeypatch.setattr(IES, "_commit", lambda self, got, dense=None: commit(self, got, dense=True))
    test_tracker_matches_reference(order, w, m, seed=0)
