"""What training did, counted from the calls that did it: one set of books for every method.

The tracker and every selection policy count through one :class:`Accounting`: samples
trained (forward + backward), their backprop cost in full-sample equivalents (a method
that trains at lower resolution counts less than one per sample), samples forwarded
without backprop (Selective Backprop's selection pass) and samples probed (the forward-only
pass that measures samples not trained). Savings derive from those counts, never from
what a mask says should have happened:

- ``backprop_saved = 1 - backprop / (N * epochs)``
- ``compute_saved = 1 - (backprop + forward_cost * (forward_only + probed)) / (N * epochs)``

``forward_cost`` is a nominal figure (1/3 by default); :class:`EpochStats` also carries
the measured probe share and a measured-time saving.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

__all__ = ["Accounting", "EpochStats", "COUNTS", "MEASURED"]

COUNTS = ("trained", "backprop", "forward_only", "probed")
MEASURED = ("train_seconds", "probe_seconds", "measured_forward_cost", "time_saved")  # wall-clock, run-dependent


@dataclass
class EpochStats:
    """What one epoch did, as plain numbers (returned by ``IES.step``)."""

    epoch: int  # the epoch these numbers describe (0-based)
    num_samples: int
    active: int  # samples eligible for backprop this epoch
    excluded: int  # samples left out of backprop this epoch
    mastered: int  # samples chosen to sit out next epoch by the rule (before annealing)
    newly_excluded: int  # active this epoch, excluded next epoch
    reincluded: int  # excluded this epoch, active next epoch
    next_active: int  # samples eligible for backprop next epoch
    trained: int  # samples recorded as trained (forward + backward) this epoch
    backpropagated: int  # samples whose loss was backpropagated this epoch
    probed: int  # samples measured by the forward-only probe pass this epoch
    unrecorded: int  # active samples with no training loss this epoch (probed instead)
    trained_while_excluded: int  # training losses recorded for samples excluded this epoch
    nonfinite: int  # non-finite losses recorded this epoch
    backprop_saved: float  # cumulative, from the counts: 1 - backprop / (N * epochs)
    compute_saved: float  # cumulative, probing charged at the nominal forward_cost
    train_seconds: float  # measured: first training record to the probe pass
    probe_seconds: float  # measured: the probe pass
    measured_forward_cost: Optional[float]  # probe seconds per sample / train seconds per sample
    time_saved: Optional[float]  # cumulative, measured: 1 - seconds / (N * seconds per trained sample)

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def counts(self) -> Dict[str, Any]:
        """:meth:`as_dict` without the measured times: equal for equal runs (e.g. after a resume)."""
        return {k: v for k, v in asdict(self).items() if k not in MEASURED}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EpochStats":
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


class Accounting:
    """Per-epoch and cumulative counts; ``close()`` ends an epoch and returns its numbers.

    Example:
        >>> books = Accounting(100)
        >>> books.add("trained", 60); books.add("backprop", 60); books.add("probed", 40)
        >>> round(books.close()["backprop_saved"], 2)
        0.4
    """

    def __init__(self, num_samples: int, forward_cost: float = 1.0 / 3.0) -> None:
        self.num_samples = num_samples
        self.forward_cost = float(forward_cost)
        self.epoch: Dict[str, float] = dict.fromkeys(COUNTS, 0)
        self.total: Dict[str, float] = {**dict.fromkeys(COUNTS, 0), "epochs": 0, "excluded": 0}
        self.seconds = {"train": 0.0, "probe": 0.0, "baseline": 0.0}  # cumulative measured time

    def add(self, key: str, n: float) -> None:
        self.epoch[key] += n

    def savings(self, epochs: Optional[int] = None) -> Dict[str, float]:
        """Cumulative savings over ``epochs`` (default: the epochs closed so far)."""
        t = self.total
        done = self.num_samples * (t["epochs"] if epochs is None else epochs)
        if done == 0:
            return {"backprop_saved": 0.0, "compute_saved": 0.0}
        return {
            "backprop_saved": 1.0 - t["backprop"] / done,
            "compute_saved": 1.0 - (t["backprop"] + self.forward_cost * (t["forward_only"] + t["probed"])) / done,
        }

    def close(self, *, excluded: int = 0, train_seconds: float = 0.0, probe_seconds: float = 0.0) -> Dict[str, Any]:
        """End the epoch: add its counts to the totals, return them with the cumulative savings."""
        e = self.epoch
        for k in COUNTS:
            self.total[k] += e[k]
        self.total["epochs"] += 1
        self.total["excluded"] += int(excluded)
        measured = self._measure(e, train_seconds, probe_seconds)
        out = {**{k: e[k] for k in COUNTS}, **self.savings(), **measured}
        self.epoch = dict.fromkeys(COUNTS, 0)
        return out

    def _measure(self, e: Dict[str, float], train_s: float, probe_s: float) -> Dict[str, Any]:
        per_train = train_s / e["trained"] if e["trained"] > 0 and train_s > 0 else None
        s = self.seconds
        s["train"] += train_s
        s["probe"] += probe_s
        if per_train is not None:
            s["baseline"] += self.num_samples * per_train  # what a full epoch would have taken
        fc = (probe_s / e["probed"]) / per_train if per_train and e["probed"] > 0 and probe_s > 0 else None
        saved = 1.0 - (s["train"] + s["probe"]) / s["baseline"] if s["baseline"] > 0 else None
        return {"train_seconds": train_s, "probe_seconds": probe_s, "measured_forward_cost": fc, "time_saved": saved}

    def summary(self, planned_epochs: int) -> Dict[str, Any]:
        """Savings over the planned run (epochs not run count as saved) and the sample counts."""
        t = self.total
        return {
            "epochs_run": int(t["epochs"]),
            **self.savings(planned_epochs),
            "samples_backpropagated": t["backprop"],
            "samples_forward_only": t["forward_only"] + t["probed"],
            "samples_probed": t["probed"],
            "sample_epochs_excluded": t["excluded"],  # sum of EpochStats.excluded over the epochs run
        }

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": dict(self.epoch), "total": dict(self.total), "seconds": dict(self.seconds)}

    @staticmethod
    def check_state(state: Any) -> None:
        """Raise ``ValueError`` if ``state`` is not a complete, numeric accounting state."""
        if not isinstance(state, dict):
            raise ValueError(f"accounting state must be a dict, got {type(state).__name__}")
        need = {"epoch": COUNTS, "total": (*COUNTS, "epochs", "excluded"), "seconds": ("train", "probe", "baseline")}
        for part, keys in need.items():
            d = state.get(part)
            missing = [k for k in keys if not isinstance(d, dict) or k not in d]
            if missing:
                raise ValueError(f"accounting state {part!r} lacks {missing}; was it saved by state_dict()?")
            bad = {k: d[k] for k in keys if isinstance(d[k], bool) or not isinstance(d[k], numbers.Real) or d[k] < 0}
            if bad:
                raise ValueError(f"accounting state {part!r} has entries that are not numbers >= 0: {bad}")
        if state["total"]["epochs"] != int(state["total"]["epochs"]):
            raise ValueError(f"accounting state: epochs must be a whole number, got {state['total']['epochs']!r}")

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.check_state(state)
        self.epoch = {k: state["epoch"][k] for k in COUNTS}
        self.total = {k: state["total"][k] for k in (*COUNTS, "epochs", "excluded")}
        self.total["epochs"] = int(self.total["epochs"])
        self.seconds = {k: float(state["seconds"][k]) for k in ("train", "probe", "baseline")}
