"""IESCallback with a real lightning.Trainer on CPU: fit, epoch lengths, checkpoint/resume, ddp_spawn.

Only public Lightning API: the epoch lengths follow from reload_dataloaders_every_n_epochs=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import lightning.pytorch as L  # noqa: E402  (the [lightning] extra; part of [dev])

from ies import IES, IESConfig, IESWarning, IndexedDataset  # noqa: E402
from ies.distributed import DistributedIES  # noqa: E402
from ies.integrations.lightning import IESCallback, ies_output, ies_sampler  # noqa: E402
from ies.training import EpochProgressLR  # noqa: E402

N, BS, THR = 64, 8, 0.5
# Samples i < CUT[e] have a low synthetic loss at epoch e, so they are excluded at e+1
# (rule order=0, window=1, m=1: mastered when the last loss < THR, from the 2nd loss on).
# Active counts per epoch: 64, 64, 24, 56, 16, 64: epochs shrink, then grow again.
CUT = {1: 40, 2: 8, 3: 48}
RULE = dict(threshold=THR, order=0, window=1, m=1, probe_backoff=False)


def synthetic_loss(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    low = idx < CUT.get(epoch, 0)
    return torch.where(low, torch.full(idx.shape, 0.1), torch.full(idx.shape, 1.0) + idx.float() / 1000)


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def probe_forward(model, batch):
    """Probe pass over TensorDataset(arange(N)): the synthetic loss of the current epoch."""
    return synthetic_loss(batch[0], model.current_epoch)


class Net(L.LightningModule):
    def __init__(self, cb: IESCallback) -> None:
        super().__init__()
        self.cb = [cb]  # a list: not a submodule, not a hyperparameter
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)

    def train_dataloader(self):
        return DataLoader(IndexedDataset(make_data()), sampler=self.cb[0].sampler(), batch_size=BS)

    def training_step(self, batch, batch_idx):
        idx, (x, y) = batch
        real = F.cross_entropy(self(x), y, reduction="none")
        out = ies_output(idx, real)
        out["ies_losses"] = synthetic_loss(idx, self.current_epoch)  # drive the rule deterministically
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NetWithVal(Net):
    def val_dataloader(self):
        return DataLoader(make_data(), batch_size=32)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


class Probe(L.Callback):
    """Per rank and epoch: indices trained, batches, validation runs, excluded set after step()."""

    def __init__(self, out_dir: str = "") -> None:
        self.out_dir = out_dir
        self.trained: dict = {}
        self.excluded: dict = {}
        self.val_runs: dict = {}
        self.num_batches: dict = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.trained[trainer.current_epoch] = []
        self.num_batches[trainer.current_epoch] = trainer.num_training_batches

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.trained[trainer.current_epoch] += batch[0].tolist()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_runs[trainer.current_epoch] = self.val_runs.get(trainer.current_epoch, 0) + 1

    def on_train_epoch_end(self, trainer, pl_module):  # runs after IESCallback's (callback order)
        ies = next(cb for cb in trainer.callbacks if isinstance(cb, IESCallback)).tracker
        self.excluded[trainer.current_epoch] = ies.excluded_indices().tolist()

    def on_train_end(self, trainer, pl_module):
        if self.out_dir:
            with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
                json.dump({"trained": self.trained, "excluded": self.excluded, "batches": self.num_batches}, f)


def reference_excluded(epochs: int) -> dict:
    """Single-process tracker fed the same per-sample losses: excluded set after each epoch."""
    ies = IES(N, **RULE)
    out = {}
    for e in range(epochs):
        idx, act = torch.arange(N), ies.active_mask
        loss = synthetic_loss(idx, e)  # every sample has a loss each epoch: trained or probed
        ies.record(idx[act], loss[act])
        ies.record_probe(idx[~act], loss[~act])
        ies.step()
        out[e] = ies.excluded_indices().tolist()
    return out


def trainer(tmp_path, epochs, cbs, **kw):
    kw.setdefault("reload_dataloaders_every_n_epochs", 1)
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=cbs, use_distributed_sampler=False,
        logger=L.loggers.CSVLogger(str(tmp_path), name="logs"), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
        enable_checkpointing=any(isinstance(c, L.callbacks.ModelCheckpoint) for c in cbs), **kw,
    )


def new_cb():
    return IESCallback(N, forward=probe_forward, probe_dataset=TensorDataset(torch.arange(N)), probe_batch_size=16, **RULE)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|num_workers|log_every_n_steps|LeafSpec|Be aware that).*")
        yield


def test_fit_epoch_lengths_logging_and_validation(tmp_path):
    cb, probe = new_cb(), Probe()
    t = trainer(tmp_path, 6, [cb, probe], log_every_n_steps=1, precision="bf16-mixed")  # CPU autocast
    t.fit(NetWithVal(cb))
    ref = reference_excluded(6)
    assert probe.excluded == ref
    active_counts = [N - len(ref[e - 1]) if e else N for e in range(6)]
    assert active_counts == [64, 64, 24, 56, 16, 64]
    for e in range(6):
        trained = probe.trained[e]
        excluded_before = set(ref[e - 1]) if e else set()
        assert sorted(trained) == sorted(set(range(N)) - excluded_before), e  # each active sample once
        assert probe.num_batches[e] == -(-active_counts[e] // BS)  # Lightning recounted the reloaded loader
    assert probe.val_runs == {e: 1 for e in range(6)}  # validation still at every (shorter) epoch's end
    assert [s.active for s in cb.tracker.history_log] == active_counts
    assert float(t.callback_metrics["ies/excluded"]) == N - 64 + len(ref[4])
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "ies/active" in logged and "ies/backprop_saved" in logged


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    full_cb, full_probe = new_cb(), Probe()
    trainer(tmp_path / "full", 6, [full_cb, full_probe]).fit(Net(full_cb))

    ck = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)
    cb1 = new_cb()
    trainer(tmp_path / "a", 3, [cb1, ck]).fit(Net(cb1))
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "IESCallback" in k)
    assert saved["tracker"]["epoch"] == 3

    cb2, probe2 = new_cb(), Probe()
    net2 = Net(cb2)
    trainer(tmp_path / "b", 6, [cb2, probe2]).fit(net2, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert cb2.tracker.epoch == 6
    for e in (3, 4, 5):
        assert probe2.excluded[e] == full_probe.excluded[e]
        assert probe2.trained[e] == full_probe.trained[e]  # same order: same epoch seeds, same active set
    assert [s.counts() for s in cb2.tracker.history_log] == [s.counts() for s in full_cb.tracker.history_log]
    assert torch.equal(cb2.tracker.history.nan_to_num(-1), full_cb.tracker.history.nan_to_num(-1))


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="loss_fn"):
        IESCallback(N)
    with pytest.raises(ValueError, match="not both"):
        IESCallback(N, tracker=IES(N), loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    sizeless = IESCallback(loss_fn=torch.nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match=r"sampler=ies_callback.sampler\(train_set\)"):
        sizeless.sampler()
    with pytest.raises(ValueError, match="reduction='none'"):
        ies_output(torch.arange(3), torch.tensor(1.0))

    cb = new_cb()

    class Plain(Net):
        def train_dataloader(self):
            return DataLoader(IndexedDataset(make_data()), batch_size=BS, shuffle=True)

    with pytest.raises(ValueError, match=r"sampler=ies_callback.sampler\(\)"):
        trainer(tmp_path, 1, [cb]).fit(Plain(cb))

    class WrongShards(Net):
        def train_dataloader(self):
            return DataLoader(IndexedDataset(make_data()), sampler=self.cb[0].sampler(num_replicas=2, rank=0))

    with pytest.raises(ValueError, match="inside train_dataloader"):
        trainer(tmp_path, 1, [cb]).fit(WrongShards(cb))

    # Without reloading, Lightning would keep the first epoch's batch count: refused in setup, with the fix.
    with pytest.raises(ValueError, match=r"Trainer\(callbacks=\[ies_callback\], reload_dataloaders_every_n_epochs=1"):
        trainer(tmp_path, 1, [cb], reload_dataloaders_every_n_epochs=0).fit(Net(cb))
    with pytest.raises(ValueError, match="tracker you built"):
        IESCallback(tracker=IES(N), loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), threshold=0.1)


@pytest.mark.parametrize("args, kwargs, expected", [
    ((), {"target_saving": 0.25, "order": 0, "window": 1}, {"target_saving": 0.25}),  # a rule field, passed through
    ((IESConfig(threshold=0.2, window=1),), {}, {"threshold": 0.2, "window": 1}),  # a whole config
    ((IESConfig(threshold=0.2),), {"order": 0}, {"threshold": 0.2, "order": 0}),  # fields override the config
])
def test_rule_parameters_reach_the_tracker(tmp_path, args, kwargs, expected):
    cb = IESCallback(N, *args, forward=probe_forward, probe_dataset=TensorDataset(torch.arange(N)), **kwargs)
    epochs = 4 if "target_saving" in expected else 2  # a target needs epochs after the first judgement (2 losses)
    trainer(tmp_path, epochs, [cb]).fit(Net(cb))
    assert {k: getattr(cb.tracker.config, k) for k in expected} == expected
    if "target_saving" in expected:  # planned over the Trainer's max_epochs unless total_epochs is given
        assert cb.tracker.config.total_epochs == 4 and len(cb.tracker.history_log) == 4


def test_unknown_rule_parameter_is_refused():
    with pytest.raises(ValueError, match="target_savings"):
        IESCallback(N, loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), target_savings=0.4)


@contextlib.contextmanager
def held_rendezvous(monkeypatch):
    """A TCPStore that this process keeps listening on, for the spawned ranks to join.

    Port 0 lets the OS pick a free port and the store keeps it bound, so no other process
    can take it between choosing and using (bind-then-release could race). Lightning's
    ddp_spawn initialises the process group from MASTER_ADDR/MASTER_PORT (env://);
    TORCHELASTIC_USE_AGENT_STORE=True is how torchrun tells that rendezvous to join an
    existing store as a client instead of starting one on rank 0.
    """
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    try:
        yield store
    finally:
        del store


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path, monkeypatch):
    """2 CPU processes (gloo): ranks agree, every active sample trained once, same sets as one process."""
    cb = new_cb()
    assert isinstance(cb.tracker, DistributedIES)
    ck = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)
    t = L.Trainer(
        max_epochs=5, accelerator="cpu", devices=2, strategy="ddp_spawn", callbacks=[cb, Probe(str(tmp_path)), ck],
        use_distributed_sampler=False, reload_dataloaders_every_n_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path),
    )
    with held_rendezvous(monkeypatch):
        t.fit(Net(cb))
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    ref = reference_excluded(5)
    for e in range(5):
        k = str(e)
        assert r0["excluded"][k] == r1["excluded"][k] == ref[e], (e, r0, r1)  # ranks agree, and with one process
        active = set(range(N)) - (set(ref[e - 1]) if e else set())
        both = r0["trained"][k] + r1["trained"][k]
        assert set(both) == active  # every active sample trained
        per_rank = -(-len(active) // 2)
        assert len(r0["trained"][k]) == len(r1["trained"][k]) == per_rank  # same count on each rank
        assert len(both) - len(active) == 2 * per_rank - len(active)  # duplicates are the padding only
        assert r0["batches"][k] == r1["batches"][k] == -(-per_rank // BS)
    state = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    saved = next(v for k, v in state["callbacks"].items() if "IESCallback" in k)["tracker"]
    assert saved["epoch"] == 5 and saved["excluded"].nonzero().flatten().tolist() == ref[4]


class NetSched(Net):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = EpochProgressLR(opt, lambda p: 1.0 - p, total_epochs=6)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_epoch_progress_schedule_follows_each_epoch_length(tmp_path):
    """Epochs of 8, 8, 3, 7, 2, 8 batches: an EpochProgressLR still ends exactly at its end."""
    cb, probe = new_cb(), Probe()
    t = trainer(tmp_path, 6, [cb, probe])
    t.fit(NetSched(cb))
    assert list(probe.num_batches.values()) == [8, 8, 3, 7, 2, 8]
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.progress == 1.0 and sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_every_sample_mastered_stops_fit_with_the_reason(tmp_path, monkeypatch):
    """Lightning ends fit() on an empty train loader: the callback stops on purpose and says why."""
    monkeypatch.setattr(sys.modules[__name__], "CUT", {1: N})  # every sample mastered after epoch 1
    cb, probe = new_cb(), Probe()
    t = trainer(tmp_path, 6, [cb, probe])
    with pytest.warns(IESWarning, match=r"IES: every sample is mastered after epoch 1 .*the 4 planned epochs left"):
        t.fit(NetSched(cb))
    assert [s.active for s in cb.tracker.history_log] == [N, N]
    assert cb.tracker.num_active == 0 and t.current_epoch == 2 and t.should_stop
    assert sorted(probe.trained) == [0, 1]  # no empty epoch was started
    # the run's saving: the 4 epochs not run count as saved, against the 6 planned; equal to a hand count
    hand = 1 - sum(len(v) for v in probe.trained.values()) / (N * 6)
    assert cb.summary["epochs_run"] == 2 and cb.summary["backprop_saved"] == pytest.approx(hand) == 4 / 6
    logged = (tmp_path / "logs" / "version_0" / "metrics.csv").read_text()
    assert "ies/run_backprop_saved" in logged  # through the Trainer's logger


def test_target_mode_runs_every_planned_epoch(tmp_path):
    """target_saving=0.5 over 12 epochs: IES caps each epoch's exclusion (max_excluded_fraction), so no
    epoch is empty and fit() runs all 12; the run's saving is the hand count."""
    cb = IESCallback(N, forward=probe_forward, probe_dataset=TensorDataset(torch.arange(N)),
                     **{k: v for k, v in RULE.items() if k != "threshold"}, target_saving=0.5)
    probe = Probe()
    with warnings.catch_warnings():
        warnings.simplefilter("error", IESWarning)
        trainer(tmp_path, 12, [cb, probe]).fit(Net(cb))
    assert len(cb.tracker.history_log) == 12 and sorted(probe.trained) == list(range(12))
    assert min(len(v) for v in probe.trained.values()) > 0
    hand = 1 - sum(len(v) for v in probe.trained.values()) / (N * 12)
    assert cb.summary["epochs_run"] == 12 and cb.summary["backprop_saved"] == pytest.approx(hand)
    assert hand == pytest.approx(0.5, abs=0.03)


class Data(L.LightningDataModule):
    """A DataModule as projects write it: the data exists only after setup(), the loader asks the trainer."""

    def setup(self, stage):
        self.train_set = make_data()

    def train_dataloader(self):
        return DataLoader(IndexedDataset(self.train_set), sampler=ies_sampler(self.trainer, self.train_set),
                          batch_size=BS)


class Model(Net):
    train_dataloader = None  # the DataModule's

    def __init__(self):
        L.LightningModule.__init__(self)
        self.lin = torch.nn.Linear(4, 2)


def test_datamodule_the_callback_learns_the_size_from_the_data(tmp_path):
    cb = IESCallback(forward=probe_forward, probe_dataset=TensorDataset(torch.arange(N)), **RULE)  # no size
    assert cb.tracker is None
    ck = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True)
    trainer(tmp_path / "a", 3, [cb, Probe(), ck]).fit(Model(), datamodule=Data())
    assert cb.tracker.num_samples == N and cb.tracker.epoch == 3
    ref = reference_excluded(5)
    assert cb.tracker.excluded_indices().tolist() == ref[2]
    # resumed by a new sizeless callback: the checkpoint tells the size
    cb2, probe2 = IESCallback(forward=probe_forward, probe_dataset=TensorDataset(torch.arange(N)), **RULE), Probe()
    trainer(tmp_path / "b", 5, [cb2, probe2]).fit(Model(), datamodule=Data(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert cb2.tracker.epoch == 5 and probe2.excluded[4] == ref[4]
    with pytest.raises(ValueError, match=r"2 IESCallback\(s\); pass exactly one"):
        ies_sampler(types.SimpleNamespace(callbacks=[cb, cb2]), make_data())


def test_a_checkpoint_of_another_state_version_is_refused():
    cb = new_cb()
    state = {"version": 99, "tracker": IES(N, **RULE).state_dict()}
    with pytest.raises(ValueError, match="IESCallback state has version 99; this ies reads version 1"):
        cb.load_state_dict(state)
    cb.load_state_dict({**state, "version": 1})
    assert cb.tracker.epoch == 0
