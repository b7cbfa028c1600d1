"""Every registered selection policy trains, reports consistent statistics, resumes and
rejects bad parameters. A method missing from ``TABLE`` fails ``test_table_covers_registry``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import pytest
import torch
from torch import nn

from ies.accounting import MEASURED
from ies.experiments import models as models_mod
from ies.experiments.config import RunConfig
from ies.experiments.data import TensorData, load_dataset
from ies.experiments.engine import run_training
from ies.policies import SelectionPolicy, build_policy, policy_names

N_MNIST = 200
EPOCHS = 2


@dataclass
class Case:
    params: Dict[str, Any]  # used for the training and resume checks
    bad: List[Dict[str, Any]]  # each must raise ValueError naming its parameter
    val_fraction: float = 0.0
    image: bool = False


TABLE: Dict[str, Case] = {
    "none": Case({}, [{"order": 4}, {"window": 0}, {"m": 0}]),
    "ies": Case({"threshold": 0.5, "order": 0, "window": 1},
                [{"threshold": -1.0}, {"threshold": float("nan")}, {"order": 4}, {"probe_every": 0},
                 {"anneal_fraction": 1.0}]),
    "random": Case({"fraction": 0.3}, [{"fraction": 1.0}, {"fraction": -0.1}, {"fraction": "half"},
                                       {"fraction": True}]),
    "infobatch": Case({"prune_ratio": 0.5, "delta": 0.875},
                      [{"prune_ratio": 1.0}, {"prune_ratio": 0.95}, {"prune_ratio": -0.5}, {"delta": 0.0},
                       {"delta": 1.5}]),
    "early-stop": Case({"patience": 1}, [{"patience": 0}, {"patience": 2.5}, {"min_delta": -1.0}],
                       val_fraction=0.2),
    "selective-backprop": Case({"beta": 2.0, "history_size": 64},
                               [{"beta": 0.0}, {"beta": float("inf")}, {"history_size": 0}, {"min_keep": 1.0}]),
    "selective-backprop-composer": Case({"keep": 0.5, "start": 0.0, "end": 1.0, "interval": 2},
                                        [{"keep": 0.0}, {"keep": 1.5}, {"start": 0.9, "end": 0.5}, {"interval": 0},
                                         {"start": "half"}]),
    "dihcl": Case({"warm_epochs": 1, "decay": 0.5, "min_fraction": 0.3},
                  [{"hardness": "flip"}, {"gamma": 0.0}, {"decay": 1.5}, {"min_fraction": 0.0},
                   {"warm_epochs": 0}]),
    "efficient-train": Case({"b0": 0.5, "ramp_fraction": 1.0},
                            [{"b0": 0.0}, {"b0": 1.5}, {"ramp_fraction": 0.0}, {"keep_size": "yes"}], image=True),
}


class TinyPoolCNN(nn.Module):
    """A size-agnostic conv net (adaptive pooling), so the resolution curriculum really shrinks inputs."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        self.seen_sizes: List[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen_sizes.append(tuple(x.shape[-2:]))
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture
def tiny_pool_model(monkeypatch):
    def build(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
        return TinyPoolCNN(num_classes, in_channels)

    monkeypatch.setitem(models_mod.MODELS, "tiny-pool-cnn", build)
    return "tiny-pool-cnn"


def tiny_images(n: int = 48, side: int = 16) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(n, 1, side, side, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(16, 1, side, side, generator=g), torch.randint(0, 10, (16,), generator=g),
                      num_classes=10, name="tiny-images", image=True)


def train_tiny(name: str, case: Case, model: Optional[str] = None):
    if case.image:
        cfg = RunConfig(dataset="fashion-mnist", model=model, method=name, method_params=case.params,
                        epochs=EPOCHS, batch_size=16, seed=1)
        return run_training(cfg, tiny_images(), keep_model=True)
    data = load_dataset("mnist1d", train_size=N_MNIST, val_fraction=case.val_fraction)
    cfg = RunConfig(dataset="mnist1d", train_size=N_MNIST, val_fraction=case.val_fraction, method=name,
                    method_params=case.params, epochs=EPOCHS, batch_size=32, seed=1)
    return run_training(cfg, data, keep_model=True)


def test_table_covers_registry() -> None:
    assert set(TABLE) == set(policy_names()), "add every registered method to TABLE (with its bad parameters)"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_trains_and_reports_consistent_statistics(name: str, tiny_pool_model: str) -> None:
    case = TABLE[name]
    res = train_tiny(name, case, model=tiny_pool_model if case.image else None)
    rows, s = res.epochs, res.summary
    n = len(res.policy.train_mask())
    T = EPOCHS
    assert s["method"] == name and s["epochs_run"] == len(rows) >= 1
    fc = res.policy.forward_cost
    for r in rows:
        assert r["active"] + r["excluded"] == n
        forwarded = r["active"] + r["forward_only"] + r["probed"]
        assert 0 <= r["backpropagated"] <= r["active"] <= forwarded
        assert 0.0 <= r["backprop_saved"] <= 1.0
        assert r["compute_saved"] <= r["backprop_saved"] + 1e-12
    # Totals add up.
    assert s["samples_backpropagated"] == sum(r["backpropagated"] for r in rows)
    assert s["samples_forward_only"] == sum(r["forward_only"] + r["probed"] for r in rows)
    equiv = s.get("backprop_equivalent", s["samples_backpropagated"])
    assert s["backprop_saved"] == pytest.approx(1 - equiv / (n * T))
    assert s["compute_saved"] == pytest.approx(1 - (equiv + fc * s["samples_forward_only"]) / (n * T))
    assert 0.0 <= s["compute_saved"] <= s["backprop_saved"] <= 1.0
    assert s["wall_seconds"] > 0 and s["saving_note"]
    assert 0.0 <= s["final_test_acc"] <= 100.0


# ----------------------------------------------------------------------------- resume
def _drive(p: SelectionPolicy, epoch: int, image: bool) -> Dict[str, Any]:
    """One synthetic epoch through every engine hook; returns what the policy decided."""
    g = torch.Generator().manual_seed(100 + epoch)
    mask = p.train_mask()
    idx = torch.nonzero(mask).flatten()
    losses = torch.rand(idx.numel(), generator=g) * (2.0 / (1 + epoch)) + 0.01 * (idx.float() / len(mask))
    out: Dict[str, Any] = {"mask": mask.clone()}
    if image:
        out["shape"] = tuple(p.transform_inputs(torch.randn(idx.numel(), 1, 16, 16, generator=g)).shape)
    if p.needs_selection_pass:
        keep = p.select(idx, losses)
        out["keep"] = keep.clone()
        p.record(idx, losses, backpropagated=int(keep.sum()), forward_only=idx.numel())
    else:
        w = p.batch_weights(idx)
        out["weights"] = None if w is None else w.clone()
        p.record(idx, losses)
    sidx = p.indices_to_probe()
    out["probed"] = sidx.clone()
    if sidx.numel():
        p.record_probe(sidx, torch.rand(sidx.numel(), generator=g))
    out["stats"] = p.close_epoch(val_accuracy=50.0 + 10.0 * (epoch % 2))
    return out


_TIMES = {*MEASURED, "seconds"}  # wall-clock measurements: they differ between any two runs


def _equal(a: Any, b: Any) -> bool:
    """Deep equality of states and statistics, measured times aside."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a, b) or (a.is_floating_point() and torch.allclose(a, b, equal_nan=True)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a if k not in _TIMES)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", sorted(TABLE))
def test_state_dict_resume_is_identical(name: str) -> None:
    case = TABLE[name]
    n, T = 40, 12
    params = {k: v for k, v in case.params.items() if k != "patience"}
    if name == "early-stop":
        params["patience"] = 5
    p1 = build_policy(name, n, total_epochs=T, seed=3, **params)
    for e in range(4):
        _drive(p1, e, case.image)
    buf = io.BytesIO()
    torch.save(p1.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf)
    p2 = build_policy(name, n, total_epochs=T, seed=3, **params)
    p2.load_state_dict(state)
    assert _equal(p2.state_dict(), p1.state_dict())
    assert torch.equal(p2.train_mask(), p1.train_mask())
    for e in range(4, 7):
        d1, d2 = _drive(p1, e, case.image), _drive(p2, e, case.image)
        assert _equal(d1, d2), f"{name}: resumed policy diverged at epoch {e}"
    assert _equal(p1.state_dict(), p2.state_dict())
    assert _equal(p1.summary(), p2.summary())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_state_from_another_method_or_size_is_refused(name: str) -> None:
    case = TABLE[name]
    other = next(m for m in sorted(TABLE) if m != name)
    p = build_policy(name, 20, total_epochs=5, **case.params)
    q = build_policy(other, 20, total_epochs=5, **TABLE[other].params)
    with pytest.raises(ValueError, match="saved by method"):
        p.load_state_dict(q.state_dict())
    bigger = build_policy(name, 30, total_epochs=5, **case.params)
    with pytest.raises(ValueError, match="samples"):
        p.load_state_dict(bigger.state_dict())


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name,bad", [(n, b) for n in sorted(TABLE) for b in TABLE[n].bad],
                         ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)))
def test_bad_parameters_are_refused_clearly(name: str, bad: Dict[str, Any]) -> None:
    with pytest.raises(ValueError) as e:
        build_policy(name, 20, total_epochs=5, **bad)
    assert next(iter(bad)) in str(e.value), f"the message should name the parameter: {e.value}"


@pytest.mark.parametrize("name", sorted(TABLE))
def test_unknown_parameter_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match="has no parameter"):
        build_policy(name, 20, total_epochs=5, no_such_knob=1)
    assert TABLE[name].bad, "give each method at least one bad parameter"
