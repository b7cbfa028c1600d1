"""One interface for every sample-selection method, and the registry that names them.

A policy answers, each epoch, *which samples are trained* (``train_mask``), *how their
losses are weighted* (``batch_weights``), optionally *which of a forwarded batch are
backpropagated* (``select``, for Selective Backprop), and *which samples get a
forward-only scoring pass* after the epoch (``indices_to_score``). The training engine
calls these hooks and reports what it did through ``record`` and ``record_scores``; the
base class turns that into the same statistics for every method, so tables compare
like with like.

Accounting (per sample): a training forward+backward costs 1, a forward alone costs
``forward_cost`` (default 1/3). ``backprop_saved = 1 - backpropagated / (N * epochs)``;
``compute_saved = 1 - (backpropagated + forward_cost * forward_only) / (N * epochs)``,
where ``epochs`` is the planned number, so stopping early counts as saving.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type

import torch
from torch import Tensor

__all__ = ["SelectionPolicy", "POLICIES", "register_policy", "build_policy", "policy_names", "policy_params"]

POLICIES: Dict[str, Type["SelectionPolicy"]] = {}


def register_policy(name: str) -> Callable[[Type["SelectionPolicy"]], Type["SelectionPolicy"]]:
    """Class decorator: make a policy available by ``name`` to the CLI, harness and tests."""

    def deco(cls: Type["SelectionPolicy"]) -> Type["SelectionPolicy"]:
        if name in POLICIES:
            raise ValueError(f"policy name {name!r} is already registered by {POLICIES[name].__name__}")
        POLICIES[name] = cls
        cls.name = name
        return cls

    return deco


def policy_names() -> List[str]:
    return sorted(POLICIES)


def policy_params(name: str) -> Dict[str, Any]:
    """The tunable parameters of a policy and their defaults."""
    cls = _lookup(name)
    sig = inspect.signature(cls.__init__)
    skip = {"self", "num_samples", "total_epochs", "seed", "forward_cost", "kwargs"}
    return {k: p.default for k, p in sig.parameters.items() if k not in skip and p.kind == p.KEYWORD_ONLY}


def _lookup(name: str) -> Type["SelectionPolicy"]:
    if name not in POLICIES:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(policy_names())}")
    return POLICIES[name]


def build_policy(name: str, num_samples: int, *, total_epochs: int, seed: int = 0, **params: Any) -> "SelectionPolicy":
    """Build a registered policy; unknown names or parameters raise ``ValueError``."""
    cls = _lookup(name)
    allowed = policy_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {name!r} has no parameter(s) {unknown}; its parameters are: "
            f"{', '.join(f'{k}={v!r}' for k, v in allowed.items()) or '(none)'}"
        )
    return cls(num_samples, total_epochs=total_epochs, seed=seed, **params)


class SelectionPolicy:
    """Base class: subclasses override the hooks they need (defaults: train everything)."""

    name: ClassVar[str] = ""
    #: How this method's saving is counted, shown in reports.
    saving_note: ClassVar[str] = "samples left out of the training forward and backward pass"
    #: True if the engine must forward each batch without grad and call ``select`` first.
    needs_selection_pass: ClassVar[bool] = False

    def __init__(self, num_samples: int, *, total_epochs: int, seed: int = 0, forward_cost: float = 1.0 / 3.0) -> None:
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(total_epochs, int) or total_epochs < 1:
            raise ValueError(f"total_epochs must be a positive int, got {total_epochs!r}")
        self.num_samples = num_samples
        self.total_epochs = total_epochs
        self.seed = int(seed)
        self.forward_cost = float(forward_cost)
        self.epoch = 0
        self.stop_training = False  # set by methods that end the whole run (early stopping)
        self._counts = {"forward_only": 0, "backprop": 0, "scored": 0}
        self.totals = {"forward_only": 0, "backprop": 0, "scored": 0, "epochs": 0, "excluded": 0}

    # ------------------------------------------------------------------ hooks
    def train_mask(self) -> Tensor:
        """Bool ``(N,)``: samples forwarded in training this epoch."""
        return torch.ones(self.num_samples, dtype=torch.bool)

    def batch_weights(self, indices: Tensor) -> Optional[Tensor]:
        """Per-sample loss weights ``(B,)`` for a training batch, or None for all ones."""
        return None

    def select(self, indices: Tensor, losses: Tensor) -> Tensor:
        """Bool ``(B,)``: which samples of a forwarded batch are backpropagated."""
        return torch.ones_like(indices, dtype=torch.bool)

    def transform_inputs(self, x: Tensor) -> Tensor:
        """Change a training batch's inputs (e.g. resolution curricula)."""
        return x

    def check_model(self, model: "torch.nn.Module", example: Tensor) -> None:
        """Raise ``ValueError`` before training if ``model`` cannot run this method on batches like ``example``."""

    def indices_to_score(self) -> Tensor:
        """Indices that need a forward-only loss after this epoch's training."""
        return torch.zeros(0, dtype=torch.int64)

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        """Subclass hook: per-sample training losses (detached, float32)."""

    def observe_scores(self, indices: Tensor, losses: Tensor) -> None:
        """Subclass hook: per-sample losses from the scoring pass."""

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        """Subclass hook: update state for the next epoch; return extra statistics."""
        return {}

    def policy_state(self) -> Dict[str, Any]:
        return {}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ engine-facing
    def record(self, indices: Tensor, losses: Tensor, *, backpropagated: Optional[int] = None, forward_only: int = 0) -> None:
        """The engine reports a trained batch: its samples' losses and how many were backpropagated."""
        b = int(losses.shape[0])
        self._counts["backprop"] += b if backpropagated is None else int(backpropagated)
        self._counts["forward_only"] += int(forward_only)
        self.observe(indices, losses.detach().float())

    def record_scores(self, indices: Tensor, losses: Tensor) -> None:
        self._counts["scored"] += int(losses.shape[0])
        self.observe_scores(indices, losses.detach().float())

    def end_epoch(self, val_accuracy: Optional[float] = None, *, excluded: Optional[int] = None) -> Dict[str, Any]:
        """Close the epoch: returns the common statistics plus the method's own."""
        n = self.num_samples
        if excluded is None:
            excluded = n - int(self.train_mask().sum())
        extra = self.on_epoch_end(val_accuracy)
        t, c = self.totals, self._counts
        t["epochs"] += 1
        t["excluded"] += int(excluded)
        for k in ("forward_only", "backprop", "scored"):
            t[k] += c[k]
        done = n * t["epochs"]
        stats = {
            "epoch": self.epoch,
            "excluded": int(excluded),
            "backpropagated": c["backprop"],
            "forward_only": c["forward_only"],
            "scored": c["scored"],
            "backprop_saved": 1.0 - t["backprop"] / done,
            "compute_saved": 1.0 - (t["backprop"] + self.forward_cost * (t["forward_only"] + t["scored"])) / done,
            **extra,
        }
        self._counts = {"forward_only": 0, "backprop": 0, "scored": 0}
        self.epoch += 1
        return stats

    def summary(self) -> Dict[str, float]:
        """Savings over the planned run (epochs not run count as saved)."""
        t = self.totals
        planned = self.num_samples * self.total_epochs
        return {
            "epochs_run": t["epochs"],
            "backprop_saved": 1.0 - t["backprop"] / planned,
            "compute_saved": 1.0 - (t["backprop"] + self.forward_cost * (t["forward_only"] + t["scored"])) / planned,
            "samples_backpropagated": t["backprop"],
            "samples_forward_only": t["forward_only"] + t["scored"],
        }

    def state_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "num_samples": self.num_samples, "epoch": self.epoch,
            "stop_training": self.stop_training, "totals": dict(self.totals), "counts": dict(self._counts),
            "policy": self.policy_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "policy" not in state:
            raise ValueError("policy state must be a dict from state_dict()")
        if state.get("name") != self.name:
            raise ValueError(f"state was saved by method {state.get('name')!r}, this is {self.name!r}")
        if state.get("num_samples") != self.num_samples:
            raise ValueError(
                f"state was saved for {state.get('num_samples')} samples, this run has {self.num_samples}; "
                "resume with the same training set"
            )
        self.epoch = int(state["epoch"])
        self.stop_training = bool(state["stop_training"])
        self.totals = dict(state["totals"])
        self._counts = dict(state["counts"])
        self.load_policy_state(state["policy"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_samples={self.num_samples}, epoch={self.epoch})"
