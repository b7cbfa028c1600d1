"""The one configuration of the IES rule, shared by the tracker, the policy, the callbacks and the CLI.

Every parameter is declared here once; :class:`~ies.IES`, the ``ies`` policy, the Lightning
callback and the Hugging Face trainer all take an :class:`IESConfig` or its fields by name.
Validation is strict: numbers must be numbers (a string or a bool is refused, not coerced).

Example:
    >>> IESConfig(target_saving=0.4, total_epochs=30).mode
    'target'
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Optional

from .criterion import history_length

__all__ = ["IESConfig", "DEFAULT_TARGET_CAP", "MAX_EPOCHS"]

DEFAULT_TARGET_CAP = 0.8  # target mode's per-epoch cap on the excluded share (docs/benchmarks/target.md §5)
# Longest run planned for (total_epochs, probe intervals): a bound users can see (probe intervals
# are stored as uint8 doublings; target mode's planner is O(log total_epochs): criterion._water_fill).
MAX_EPOCHS = 100_000


def _number(name: str, value: Any, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number{hint}, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise ValueError(f"{name} must be a finite number{hint}, got {value!r}")
    return v


def _integer(name: str, value: Any, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r}")
    return int(value)


def _is_large(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > MAX_EPOCHS


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class IESConfig:
    """Parameters of the IES rule. The rule's defaults are the paper's (δ-mode, δ = 1e-3, order 2).

    Two ways to decide who sits out:

    - **δ-mode** (default, the paper's rule): a sample is excluded next epoch when its
      criterion (the moving average of ``|order-k difference|`` of its loss) is below
      ``threshold``. The saving follows from δ and is hard to predict.
    - **target mode** (``target_saving=s, total_epochs=E``): each epoch the tracker excludes
      as many samples as keep the run's cumulative *backprop* saving (sample-epochs not
      backpropagated / ``N * E``) on course to ``s`` by epoch ``E``, choosing the samples with
      the lowest criterion (ties by index). Samples without a full history are never excluded;
      ``max_threshold`` optionally caps the criterion of an excluded sample;
      ``target_schedule`` spreads the saving over the epochs in proportion to the square of
      the epoch (``"late"``, the default: little early, most as training matures, like the
      δ-rule), to the epoch (``"ramp"``) or evenly (``"even"``);
      ``target_measure="compute"`` makes the target the compute saving instead, with the
      probe pass charged at ``forward_cost`` (for a compute budget: 2x is 0.5). No epoch
      excludes more than ``max_excluded_fraction`` of the samples (0.8 by default in target
      mode), so the plan never empties the last epochs and a framework never sees an empty one.

    ``keep_fraction=p`` (either mode) trains a random share ``p`` of the samples the rule
    chose to sit out, drawn from ``seed + epoch``, and ``record()`` weighs their loss ``1/p``,
    so the expected gradient equals the full data's (InfoBatch's rescaling on IES's choice).

    Probing (the forward-only pass that measures excluded samples): back-off by default (below;
    measured in docs/benchmarks/probing.md: same accuracy, fastest); ``probe_backoff=False``
    probes every excluded sample every epoch, as the paper does;
    ``probe_every=r`` probes each excluded sample once every ``r`` epochs, staggered by index
    so the cost is flat; ``probe_backoff=True`` doubles a sample's interval after each probe
    that leaves it excluded, up to ``probe_max_interval``, and starts again from ``probe_every``
    when it is excluded anew. A sample's history is the sequence of its own measurements: an
    unprobed epoch adds nothing to it, so its criterion (and its exclusion) stands until it is
    measured again.
    """

    threshold: float = 1e-3  # δ: the paper's default; 0 disables removal (δ-mode)
    order: int = 2  # k: second-order difference, the paper's choice (Figure 5 compares 0..3)
    window: int = 3  # w: the paper code's moving_average_rate
    m: int = 1  # how many of the last moving averages are summed (paper code: k=1)
    target_saving: Optional[float] = None  # target mode: backprop saving to reach by total_epochs
    max_threshold: Optional[float] = None  # target mode: never exclude a sample whose criterion is above
    target_schedule: str = "late"  # target mode: "late" (∝ epoch², measured best), "ramp" (∝ epoch), "even"
    target_measure: str = "backprop"  # target mode: "backprop" sample-epochs, or "compute" (probing charged)
    # Per-epoch cap on the excluded share. None: 0.8 in target mode (every epoch trains >= 20%, so late
    # epochs keep learning at their low learning rate and no framework sees an empty epoch), no cap in
    # δ-mode (the paper's rule). Measured in docs/benchmarks/target.md §5.
    max_excluded_fraction: Optional[float] = None
    # Share of the samples chosen to sit out that train anyway each epoch (drawn from seed + epoch),
    # their loss weighted 1/keep_fraction so the expected gradient is the full data's (InfoBatch's
    # rescaling applied to IES's choice). 0: off.
    keep_fraction: float = 0.0
    seed: int = 0  # keep_fraction's draws (seed + epoch), equal on every rank
    probe_every: int = 1  # r: probe each excluded sample every r epochs, staggered (App. F uses 5)
    probe_backoff: bool = True  # double a still-excluded sample's probe interval up to the cap
    probe_max_interval: int = 8  # cap of the back-off interval, in epochs
    probe_all: bool = False  # probe every sample (trained ones too) and judge all on that measure
    anneal_fraction: float = 0.0  # train on all data for this last fraction of epochs (ImageNet: 0.1)
    total_epochs: Optional[int] = None  # the planned run length (annealing, target mode)
    forward_cost: float = 1.0 / 3.0  # nominal cost of a forward pass relative to forward + backward

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if _number("threshold", self.threshold, " >= 0 (0 disables removal; the paper uses 1e-3)") < 0:
            raise ValueError(f"threshold must be a finite number >= 0 (0 disables removal; the paper uses 1e-3), "
                             f"got {self.threshold!r}")
        object.__setattr__(self, "threshold", float(self.threshold))  # a 21-digit int compares as a float
        o = self.order
        if isinstance(o, bool) or not isinstance(o, numbers.Integral) or not 0 <= o <= 3:
            raise ValueError(f"order must be an int in 0..3 (0: loss, 2: second difference), got {o!r}")
        _integer("window", self.window, 1, " (the paper uses 3)")
        _integer("m", self.m, 1, " (the paper uses 1)")
        _integer("probe_every", self.probe_every, 1, " (1 probes every epoch)")
        _flag("probe_backoff", self.probe_backoff)
        for k in ("probe_every", "probe_max_interval", "total_epochs"):
            if _is_large(getattr(self, k)):
                raise ValueError(f"{k} must be at most {MAX_EPOCHS:,} epochs (the longest run ies plans for), got "
                                 f"{getattr(self, k)!r}")
        if _integer("probe_max_interval", self.probe_max_interval, 1, " (epochs)") < self.probe_every:
            raise ValueError(f"probe_max_interval ({self.probe_max_interval}) must be >= probe_every ({self.probe_every})")
        _flag("probe_all", self.probe_all)
        a = _number("anneal_fraction", self.anneal_fraction, " in [0, 1)")
        if not 0.0 <= a < 1.0:
            raise ValueError(f"anneal_fraction must be in [0, 1), got {self.anneal_fraction!r}")
        if self.total_epochs is not None:
            _integer("total_epochs", self.total_epochs, 1, " (a positive int: the planned number of epochs) or None")
        fc = _number("forward_cost", self.forward_cost, " in (0, 1]")
        if not 0.0 < fc <= 1.0:
            raise ValueError(f"forward_cost must be in (0, 1] (a forward is ~1/3 of forward+backward), got {self.forward_cost!r}")
        if a > 0 and self.total_epochs is None:
            raise ValueError("anneal_fraction > 0 needs total_epochs (the planned number of epochs)")
        mx = self.max_excluded_fraction
        if mx is not None:
            v = _number("max_excluded_fraction", mx, " in (0, 1] or None")
            if not 0.0 < v <= 1.0:
                raise ValueError(f"max_excluded_fraction must be in (0, 1] (0.8: every epoch trains at least 20%), got {mx!r}")
        k = _number("keep_fraction", self.keep_fraction, " in [0, 1)")
        if not 0.0 <= k < 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1) (0.5 trains half of the chosen samples at weight 2), "
                             f"got {self.keep_fraction!r}")
        if not 0 <= _integer("seed", self.seed, 0, " (any int in [0, 2**63))") < 2**63:
            raise ValueError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        self._validate_target()

    def _validate_target(self) -> None:
        if self.target_saving is None:
            if self.max_threshold is not None:
                raise ValueError("max_threshold caps target mode: set target_saving too, or use threshold for δ-mode")
            if self.target_schedule != "late" or self.target_measure != "backprop":
                raise ValueError("target_schedule and target_measure shape target mode: set target_saving too")
            return
        s = _number("target_saving", self.target_saving, " in (0, 1)")
        if not 0.0 < s < 1.0:
            raise ValueError(f"target_saving must be in (0, 1) (0.4 saves 40% of backprop), got {self.target_saving!r}")
        if self.total_epochs is None:
            raise ValueError("target_saving needs total_epochs: the saving is planned over the whole run")
        if self.target_schedule not in ("even", "ramp", "late"):
            raise ValueError(f"target_schedule must be 'even', 'ramp' or 'late', got {self.target_schedule!r}")
        if self.target_measure not in ("backprop", "compute"):
            raise ValueError(f"target_measure must be 'backprop' or 'compute', got {self.target_measure!r}")
        first = history_length(self.order, self.window, self.m)  # the first epoch a sample can be judged
        plan = self.anneal_start if self.anneal_start is not None else self.total_epochs
        cap = self.target_exclusion_limit
        reachable = cap * max(0, plan - first) / self.total_epochs
        if self.target_measure == "compute" and not self.probe_backoff and not self.probe_all:
            reachable *= 1.0 - self.forward_cost / self.probe_every  # a probed sample-epoch saves 1 - forward_cost
        if s > reachable:
            why = (f"no sample is judged before epoch {first}"
                   f"{', annealing trains all from epoch ' + str(plan) if plan < self.total_epochs else ''}"
                   f"{f' and at most {cap:.2f} of the samples sit out an epoch' if cap < 1 else ''}")
            raise ValueError(f"target_saving={s} cannot be reached in {self.total_epochs} epochs: {why}, so at most "
                             f"{reachable:.3f} can be saved; lower the target, plan more epochs or raise max_excluded_fraction")
        if self.max_threshold is not None and _number("max_threshold", self.max_threshold, " or None") <= 0:
            raise ValueError(f"max_threshold must be > 0 (or None for no cap), got {self.max_threshold!r}")

    @property
    def mode(self) -> str:
        """``"target"`` when ``target_saving`` is set, else ``"delta"``."""
        return "delta" if self.target_saving is None else "target"

    @property
    def exclusion_cap(self) -> float:
        """The largest share of samples that may sit out one epoch (``max_excluded_fraction`` resolved)."""
        if self.max_excluded_fraction is not None:
            return float(self.max_excluded_fraction)
        return DEFAULT_TARGET_CAP if self.target_saving is not None else 1.0

    @property
    def target_exclusion_limit(self) -> float:
        """Target mode: the largest share one epoch can exclude, the cap and ``keep_fraction`` together
        (of the chosen samples ``keep_fraction`` train, so at most ``1 - keep_fraction`` of all sit out)."""
        return min(self.exclusion_cap, 1.0 - self.keep_fraction)

    @property
    def removes(self) -> bool:
        """Whether the rule can exclude anything (δ > 0 or a target)."""
        return self.target_saving is not None or self.threshold > 0

    @property
    def anneal_start(self) -> Optional[int]:
        """First epoch (0-based) of full-data annealing, or None."""
        if self.anneal_fraction <= 0 or self.total_epochs is None:
            return None
        return self.total_epochs - max(1, int(round(self.anneal_fraction * self.total_epochs)))

    @property
    def shape(self) -> Dict[str, int]:
        """The parameters that fix the size of the history (a saved state must match them)."""
        return {"order": self.order, "window": self.window, "m": self.m}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "IESConfig":
        """A copy with ``changes`` applied (validated); unknown names raise ``ValueError``."""
        check_names(changes)
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "IESConfig":
        """Build from a dict of fields; unknown keys raise ``ValueError`` listing the valid ones."""
        if not isinstance(d, dict):
            raise ValueError(f"an IES config must be a dict of its fields, got {type(d).__name__}")
        check_names(d)
        return cls(**d)


def field_names() -> Dict[str, Any]:
    """Every field of :class:`IESConfig` and its default."""
    return {f.name: f.default for f in fields(IESConfig)}


def check_names(d: Dict[str, Any]) -> None:
    unknown = sorted(set(d) - set(field_names()))
    if unknown:
        raise ValueError(f"unknown IES parameter(s) {unknown}; valid: {', '.join(field_names())}")
