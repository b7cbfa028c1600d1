"""The probe pass for models whose loss needs the targets: the loss_fn(model, batch) form."""

import pytest
import torch
from torch import nn

import ies
from ies.dense import per_sample_mean
from ies.probing import frozen_train_mode, probe_losses


class LossModel(nn.Module):
    """Returns per-pixel losses only in train mode (as torchvision's detectors return losses), with BN and dropout."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, mask=None):
        logits = self.drop(self.bn(self.conv(x)))
        if not self.training:
            return logits.argmax(1)
        pix = nn.functional.cross_entropy(logits, mask, reduction="none", ignore_index=255)
        pick = torch.rand(pix.shape) < 0.5  # random sampling inside the loss (like a proposal sampler)
        return {"seg": per_sample_mean(pix, pick & (mask != 255))}


def _data(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n, 6, 6), generator=g)


def _loss(model, batch):
    x, mask = batch
    return model(x, mask)["seg"]


def test_frozen_train_mode_keeps_running_stats_and_restores_every_module_mode():
    model = LossModel()
    model.train()
    model.bn.eval()  # a user's own mixed mode must come back as it was
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    x, y = _data()
    losses = probe_losses(model, (x, y), torch.arange(10), forward=_loss, frozen_train=True, rng_seed=0)
    assert losses.shape == (10,) and torch.isfinite(losses).all()
    after = model.bn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and not model.bn.training and model.drop.training


def test_plain_train_mode_would_drift_the_running_stats():
    """The control: the same pass without frozen_train updates BatchNorm (so the test above can fail)."""
    model = LossModel().train()
    before = model.bn.running_mean.clone()
    x, y = _data()
    probe_losses(model, (x, y), torch.arange(10), forward=_loss, eval_mode=False)
    assert not torch.equal(before, model.bn.running_mean)


def test_rng_seed_fixes_the_sampling_per_sample_and_leaves_the_global_rng_alone():
    model = LossModel()
    x, y = _data()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = probe_losses(model, (x, y), torch.tensor([2, 5, 7]), forward=_loss, frozen_train=True, rng_seed=9,
                     batch_size=1)
    assert torch.equal(state, torch.get_rng_state())
    # another epoch probes another set: samples 5 and 7 get the same draws, hence the same losses
    b = probe_losses(model, (x, y), torch.tensor([0, 5, 7]), forward=_loss, frozen_train=True, rng_seed=9,
                     batch_size=1)
    assert torch.equal(a[1:], b[1:])
    c = probe_losses(model, (x, y), torch.tensor([2, 5, 7]), forward=_loss, frozen_train=True, batch_size=1)
    assert not torch.equal(a, c)  # without a seed the sampler decides, and the losses move


def test_end_epoch_takes_the_form_through_the_tracker():
    model = LossModel().train()
    x, y = _data()
    tracker = ies.IES(10, threshold=1e-3, probe_all=True)
    running = model.bn.running_var.clone()
    tracker.record(torch.arange(10), torch.ones(10))  # the epoch's training losses
    stats = tracker.end_epoch(model, (x, y), forward=_loss, frozen_train=True, rng_seed=0)
    assert stats.probed == 10 and torch.equal(running, model.bn.running_var)


def test_a_dict_instead_of_per_sample_losses_is_refused():
    model = LossModel()
    x, y = _data()
    with pytest.raises(ValueError, match="dict"):
        probe_losses(model, (x, y), torch.arange(3), forward=lambda m, b: m(b[0], b[1]), frozen_train=True)


def test_frozen_train_mode_context_on_its_own():
    model = LossModel().eval()
    with frozen_train_mode(model):
        assert model.training and not model.bn.training and not model.drop.training
    assert not model.training and not model.conv.training
