"""One interface for every sample-selection method, and the registry that names them.

A policy answers, each epoch, *which samples are trained* (``train_mask``), *how their
losses are weighted* (``batch_weights``), optionally *which of a forwarded batch are
backpropagated* (``select``, for Selective Backprop), and *which samples get a
forward-only probe pass* after the epoch (``indices_to_probe``). The training engine
calls these hooks, reports what it did through ``record`` and ``record_probe``, and ends
the epoch with ``close_epoch``. The counting is one :class:`~ies.accounting.Accounting`
(``policy.books``) for every method, shared with the tracker for IES, so tables compare
like with like.

The protocol, and the extras a method may opt into:

- required: nothing (the defaults train everything, like ``none``);
- ``train_mask`` / ``batch_weights`` / ``transform_inputs``: what and how a batch trains;
- ``needs_selection_pass = True`` + ``select``: forward a batch, backprop a subset;
- ``indices_to_probe`` + ``observe_probe``: a forward-only pass after the epoch;
- ``backprop_cost``: cost of one trained sample in full-sample equivalents (resolution curricula);
- ``observe`` / ``on_epoch_end`` / ``policy_state`` / ``load_policy_state``: the method's own state.

Accounting (per sample): a training forward+backward costs ``backprop_cost()`` (1), a
forward alone costs ``forward_cost`` (default 1/3). ``backprop_saved = 1 - backprop /
(N * epochs)``; ``compute_saved = 1 - (backprop + forward_cost * forward_only) / (N * epochs)``,
where the summary's ``epochs`` is the planned number, so stopping early counts as saving.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Dict, List, Optional, Type

import torch
from torch import Tensor

from ..accounting import Accounting

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
    return dict(_lookup(name).params())


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

    def selects_next_batch(self) -> bool:
        """Does the next batch get the selection pass? ``needs_selection_pass``, unless a method
        selects on some batches only (Composer's Selective Backprop); called once per batch."""
        return self.needs_selection_pass

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
        self.books = Accounting(num_samples, self.forward_cost)

    @classmethod
    def params(cls) -> Dict[str, Any]:
        """The method's own parameters and defaults: its keyword-only ``__init__`` arguments."""
        sig = inspect.signature(cls.__init__)
        skip = {"self", "num_samples", "total_epochs", "seed", "forward_cost", "kwargs"}
        return {k: p.default for k, p in sig.parameters.items() if k not in skip and p.kind == p.KEYWORD_ONLY}

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

    def indices_to_probe(self) -> Tensor:
        """Indices that need a forward-only loss after this epoch's training."""
        return torch.zeros(0, dtype=torch.int64)

    def backprop_cost(self) -> float:
        """Cost of training one sample now, in full-sample forward+backward equivalents."""
        return 1.0

    def observe(self, indices: Tensor, losses: Tensor) -> None:
        """Subclass hook: per-sample training losses (detached, float32)."""

    def observe_probe(self, indices: Tensor, losses: Tensor) -> None:
        """Subclass hook: per-sample losses from the probe pass."""

    def on_epoch_end(self, val_accuracy: Optional[float]) -> Dict[str, Any]:
        """Subclass hook: update state for the next epoch; return extra statistics."""
        return {}

    def policy_state(self) -> Dict[str, Any]:
        return {}

    def load_policy_state(self, state: Dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ engine-facing
    def record(self, indices: Tensor, losses: Tensor, *, backpropagated: Optional[int] = None, forward_only: int = 0) -> None:
        """The engine reports a batch: its samples' losses, how many were backpropagated, how many only forwarded."""
        b = int(losses.shape[0]) if backpropagated is None else int(backpropagated)
        self.books.add("trained", b)
        self.books.add("backprop", b * self.backprop_cost())
        self.books.add("forward_only", int(forward_only))
        self.observe(indices, losses.detach().float())

    def record_probe(self, indices: Tensor, losses: Tensor, *, seconds: float = 0.0) -> None:
        """The engine reports the losses of the probe pass (``seconds``: how long it took)."""
        self.books.add("probed", int(losses.shape[0]))
        self.observe_probe(indices, losses.detach().float())

    def close_epoch(self, val_accuracy: Optional[float] = None) -> Dict[str, Any]:
        """End the epoch: the common statistics from the books plus the method's own."""
        excluded = self.num_samples - int(self.train_mask().sum())
        extra = self.on_epoch_end(val_accuracy)
        stats = {"epoch": self.epoch, "excluded": excluded, **self._row(self.books.close(excluded=excluded)), **extra}
        self.epoch += 1
        return stats

    @staticmethod
    def _row(books: Dict[str, Any]) -> Dict[str, Any]:
        """The books' epoch numbers under the names every table uses."""
        return {"backpropagated": books["trained"], "backprop_equivalent": books["backprop"],
                "forward_only": books["forward_only"], "probed": books["probed"],
                "backprop_saved": books["backprop_saved"], "compute_saved": books["compute_saved"]}

    def summary(self) -> Dict[str, float]:
        """Savings over the planned run (epochs not run count as saved)."""
        s = self.books.summary(self.total_epochs)
        s["backprop_equivalent"] = s["samples_backpropagated"]
        s["samples_backpropagated"] = self.books.total["trained"]
        return s

    def state_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name, "num_samples": self.num_samples, "epoch": self.epoch,
            "stop_training": self.stop_training, "books": self.books.state_dict(), "policy": self.policy_state(),
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
        Accounting.check_state(state.get("books"))
        self.epoch = int(state["epoch"])
        self.stop_training = bool(state["stop_training"])
        self.books.load_state_dict(state["books"])
        self.load_policy_state(state["policy"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_samples={self.num_samples}, epoch={self.epoch})"
