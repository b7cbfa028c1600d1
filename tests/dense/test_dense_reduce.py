"""ies.dense: per-pixel and per-box losses reduced to one loss per sample."""

import math

import pytest
import torch
import torch.nn.functional as F

import ies
from ies.dense import EMPTY_SAMPLE_LOSS, batch_mean, per_sample_mean, scatter_mean


def test_per_sample_mean_skips_the_ignore_label():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 6)
    mask = torch.randint(0, 4, (3, 5, 6))
    mask[0, :2] = 255
    mask[2] = 255  # no valid pixel at all
    pix = F.cross_entropy(logits, mask, reduction="none", ignore_index=255)
    got = per_sample_mean(pix, target=mask, ignore_index=255)
    for b in range(2):
        keep = mask[b] != 255
        assert torch.allclose(got[b], F.cross_entropy(logits[b:b + 1], mask[b:b + 1], ignore_index=255))
        assert torch.allclose(got[b], pix[b][keep].mean())
    assert math.isnan(float(got[2])) and math.isnan(EMPTY_SAMPLE_LOSS)


def test_ignored_values_never_leak_not_even_nan_and_get_no_gradient():
    losses = torch.tensor([[1.0, float("nan"), 3.0], [float("inf"), 2.0, 4.0]], requires_grad=True)
    valid = torch.tensor([[True, False, True], [False, True, True]])
    out = per_sample_mean(losses, valid)
    assert out.tolist() == [2.0, 3.0]
    out.sum().backward()
    assert losses.grad.tolist() == [[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]


def test_no_mask_is_the_plain_mean_and_bad_shapes_are_refused():
    x = torch.arange(12.0).reshape(2, 2, 3)
    assert per_sample_mean(x).tolist() == [2.5, 8.5]
    with pytest.raises(ValueError, match="must match"):
        per_sample_mean(x, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="ignore_index"):
        per_sample_mean(x, target=x)
    with pytest.raises(ValueError, match="scalar"):
        per_sample_mean(x.sum())


@pytest.mark.filterwarnings("ignore:epoch .* not finite")  # 1 of 1 late records is NaN: the tracker warns, rightly
def test_empty_sample_is_never_excluded_by_the_tracker():
    """A sample whose every pixel is ignored (NaN) stays in training while a constant one is excluded."""
    tracker = ies.IES(2, threshold=1e-3)
    for _ in range(8):
        idx = torch.nonzero(~tracker.excluded).flatten()  # the samples this epoch trains
        pix = torch.ones(2, 4)
        valid = torch.tensor([[True] * 4, [False] * 4])
        tracker.record(idx, per_sample_mean(pix, valid)[idx])
        stats = tracker.step()
    excluded = tracker.excluded.tolist()
    assert excluded == [True, False], excluded
    assert stats.nonfinite == 1


def test_scatter_mean_equals_a_loop_and_is_differentiable():
    torch.manual_seed(1)
    values = torch.rand(50, requires_grad=True)
    index = torch.randint(0, 6, (50,))
    index[index == 4] = 5  # image 4 has no box
    got = scatter_mean(values, index, 7)
    for b in range(7):
        sel = values[index == b]
        if sel.numel():
            assert torch.allclose(got[b], sel.mean())
        else:
            assert math.isnan(float(got[b].detach()))
    batch_mean(got).backward()
    assert torch.isfinite(values.grad).all() and (values.grad > 0).all()


def test_scatter_mean_refuses_indices_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        scatter_mean(torch.ones(3), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="image_index"):
        scatter_mean(torch.ones(3), torch.tensor([0, 1]), 2)


def test_batch_mean_skips_nan_and_passes_it_no_gradient():
    x = torch.tensor([1.0, float("nan"), 3.0], requires_grad=True)
    y = batch_mean(x)
    assert float(y.detach()) == 2.0
    y.backward()
    assert x.grad.tolist() == [0.5, 0.0, 0.5]
    assert float(batch_mean(torch.tensor([float("nan")]))) == 0.0
