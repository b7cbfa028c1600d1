"""The probe pass on in-memory tensors, channels-last models, batch-size tuning, and the schedules' pure functions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ies.probing import backoff_next, probe_losses, staggered_due, tune_probe_batch_size


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def data(n: int = 40) -> tuple:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


CE = nn.CrossEntropyLoss(reduction="none")


def test_tensor_data_equals_the_dataset_path() -> None:
    x, y = data()
    idx = torch.tensor([5, 0, 39, 17, 17 - 1])
    net = conv_net()
    a = probe_losses(net, (x, y), idx, CE, batch_size=2)
    b = probe_losses(net, TensorDataset(x, y), idx, CE, batch_size=3)
    assert torch.allclose(a, b) and a.shape == (5,)
    with pytest.raises(ValueError, match="equal length"):
        probe_losses(net, (x, y[:-1]), idx, CE)


def test_channels_last_model_gets_channels_last_inputs() -> None:
    x, y = data()
    net = conv_net().to(memory_format=torch.channels_last)
    seen = []
    net[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].is_contiguous(memory_format=torch.channels_last)))
    out = probe_losses(net, (x, y), torch.arange(8), CE, batch_size=4)
    assert seen == [True, True]
    assert torch.allclose(out, probe_losses(conv_net(), (x, y), torch.arange(8), CE), atol=1e-6)


def test_autocast_dtype_runs_the_pass_under_autocast() -> None:
    x, y = data()
    out = probe_losses(conv_net(), (x, y), torch.arange(6), CE, autocast_dtype=torch.bfloat16)
    assert out.dtype == torch.float32  # recorded as float32 whatever the compute dtype
    assert torch.allclose(out, probe_losses(conv_net(), (x, y), torch.arange(6), CE), atol=0.05)


def test_batch_size_must_be_a_positive_int() -> None:
    x, y = data()
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            probe_losses(conv_net(), (x, y), [1], CE, batch_size=bad)


def test_tune_probe_batch_size_picks_a_measured_candidate() -> None:
    x, y = data(64)
    best, per_sample = tune_probe_batch_size(conv_net(), (x, y), CE, candidates=(8, 32), repeats=2)
    assert best in (8, 32) and set(per_sample) == {8, 32}
    assert per_sample[best] == min(per_sample.values()) and all(v > 0 for v in per_sample.values())


@pytest.mark.parametrize("every", [1, 2, 3, 5])
def test_staggered_due_is_each_once_per_r_epochs(every: int) -> None:
    idx = torch.arange(30)
    due = torch.stack([staggered_due(idx, e, every) for e in range(every)])
    assert torch.equal(due.sum(0), torch.ones(30, dtype=torch.long))  # each exactly once in r epochs
    assert due.sum(1).tolist() == [30 // every] * every  # 1/r of them each epoch


def test_backoff_next_table() -> None:
    interval = torch.tensor([1, 2, 8, 4, 4])
    due = torch.tensor([5, 6, 9, 9, 3])
    probed = torch.tensor([True, True, True, False, False])
    stays = torch.tensor([True, True, True, True, False])
    newly = torch.tensor([False, False, False, False, True])
    new_interval, new_due = backoff_next(interval, due, probed, stays, newly, 5, first=1, cap=8)
    assert new_interval.tolist() == [2, 4, 8, 4, 1]  # doubled, doubled, capped, unchanged (not probed), reset
    assert new_due.tolist() == [7, 9, 13, 9, 6]  # epoch + interval; a newly excluded one: the next epoch
