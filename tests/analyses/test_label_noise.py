"""Label noise generators: exact symmetric fraction, instance-dependent rate, never a self-flip."""

import math
import pytest
import torch

from ies.experiments.noise import instance_dependent_noise, make_noisy_labels, symmetric_noise, truncated_normal


def _data(n=4000, c=10, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.4, 1.0])
def test_symmetric_flips_exactly_round_rate_n_to_other_classes(rate):
    x, y = _data(n=1003)
    noisy, flipped = symmetric_noise(y, rate, 10, seed=3)
    assert int(flipped.sum()) == round(rate * 1003)  # exact: every chosen sample changes class
    assert torch.equal(flipped, noisy != y)
    assert torch.equal(noisy[~flipped], y[~flipped])
    assert noisy.min() >= 0 and noisy.max() < 10 and noisy.dtype == y.dtype


def test_symmetric_targets_are_uniform_over_other_classes_and_seeded():
    x, y = _data(n=20000, c=4)
    noisy, flipped = symmetric_noise(y, 0.5, 4, seed=1)
    offsets = ((noisy - y) % 4)[flipped]
    counts = torch.bincount(offsets, minlength=4)
    assert counts[0] == 0 and (counts[1:].float() / offsets.numel() - 1 / 3).abs().max() < 0.02
    again, _ = symmetric_noise(y, 0.5, 4, seed=1)
    other, _ = symmetric_noise(y, 0.5, 4, seed=2)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def _truncnorm_mean(mu, sd=0.1, lo=0.0, hi=1.0):
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    a, b = (lo - mu) / sd, (hi - mu) / sd
    return mu + sd * (phi(a) - phi(b)) / (cdf(b) - cdf(a))


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_instance_dependent_noise_hits_its_rate(rate):
    x, y = _data()
    noisy, flipped = instance_dependent_noise(x, y, rate, 10, seed=0)
    # Tolerance 0.03 absolute: ~4 binomial standard errors at N = 4000 (the truncated normal's
    # mean is within 0.006 of the rate here).
    assert abs(_truncnorm_mean(rate) - rate) < 0.006
    assert abs(float(flipped.float().mean()) - rate) < 0.03
    assert torch.equal(flipped, noisy != y)  # a "flip" always changes the class
    assert noisy.min() >= 0 and noisy.max() < 10
    again, _ = instance_dependent_noise(x, y, rate, 10, seed=0)
    assert torch.equal(noisy, again)


def test_instance_dependent_noise_depends_on_the_instance():
    # The flip target comes from a projection of the features: identical inputs with the same
    # label have the same target distribution, so their flips concentrate on few classes.
    x, y = _data(n=4000)
    x = x[:1].repeat(4000, 1)
    y = torch.full((4000,), 3)
    noisy, flipped = instance_dependent_noise(x, y, 0.4, 10, seed=0)
    top_share = torch.bincount(noisy[flipped], minlength=10).max() / flipped.sum()
    assert float(top_share) > 0.5  # symmetric noise would give ~1/9
    assert not (noisy[flipped] == 3).any()


def test_rate_zero_and_errors():
    x, y = _data(n=100)
    for kind in ("symmetric", "instance"):
        noisy, flipped = make_noisy_labels(kind, x, y, 0.0, 10, seed=0)
        assert not flipped.any() and torch.equal(noisy, y)
    with pytest.raises(ValueError):
        make_noisy_labels("pairflip", x, y, 0.2, 10)
    with pytest.raises(ValueError):
        symmetric_noise(y, 1.5, 10)
    with pytest.raises(ValueError):
        symmetric_noise(y, 0.2, 5)  # labels out of range for 5 classes


def test_truncated_normal_stays_in_bounds():
    g = torch.Generator().manual_seed(0)
    d = truncated_normal(5000, 0.4, 0.1, 0.0, 1.0, g)
    assert d.min() >= 0 and d.max() <= 1 and abs(float(d.mean()) - 0.4) < 0.01
