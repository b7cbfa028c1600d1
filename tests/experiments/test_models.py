"""Tests for ies.experiments.models: every model trains one step on a tiny batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ies.experiments.dense.models import DENSE_MODELS
from ies.experiments.models import MODELS, build_model

# name -> (build kwargs, input shape for a batch of 2)
CASES = {
    "mnist1d-cnn": (dict(in_channels=1), (2, 40)),
    "mlp-1d": (dict(in_channels=1), (2, 40)),
    "mlp": (dict(in_channels=1), (2, 1, 28, 28)),
    "small-cnn": (dict(in_channels=1), (2, 1, 28, 28)),
    "resnet18": (dict(in_channels=3), (2, 3, 32, 32)),
    "resnet34": (dict(in_channels=3), (2, 3, 32, 32)),
    "resnet50": (dict(in_channels=3), (2, 3, 32, 32)),
    "resnet101": (dict(in_channels=3), (2, 3, 32, 32)),
    "vgg16": (dict(in_channels=3), (2, 3, 32, 32)),
    "densenet121": (dict(in_channels=3), (2, 3, 32, 32)),
}


def test_cases_cover_registry() -> None:
    # the dense ones: tests/dense/test_dense_engine.py; tiny-bert takes token ids: tests/experiments/test_text.py
    assert set(CASES) == set(MODELS) - set(DENSE_MODELS) - {"tiny-bert"}


@pytest.mark.parametrize("name", list(CASES))
def test_one_training_step(name: str) -> None:
    torch.manual_seed(0)
    kwargs, shape = CASES[name]
    num_classes = 7
    model = build_model(name, num_classes=num_classes, **kwargs)
    model.train()
    x, y = torch.randn(*shape), torch.tensor([0, 6])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(x)
    assert out.shape == (2, num_classes)
    loss = F.cross_entropy(out, y)
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    changed = sum(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    assert changed > 0
    # The classifier head always receives gradient.
    last = list(model.parameters())[-1]
    assert not torch.equal(before[-1], last.detach())


def test_resnet18_param_count() -> None:
    n = sum(p.numel() for p in build_model("resnet18", num_classes=10, in_channels=3).parameters())
    assert 11_000_000 < n < 11_300_000  # 11,173,962 in the pytorch-cifar reference


def test_mnist1d_cnn_matches_paper_shape() -> None:
    m = build_model("mnist1d-cnn", num_classes=10)
    assert m.linear.in_features == 125  # 25 channels x length 5 for L = 40
    assert build_model("mnist1d-cnn", num_classes=10, input_length=80)(torch.randn(3, 80)).shape == (3, 10)


def test_image_sizes_and_channels() -> None:
    assert build_model("small-cnn", num_classes=10, in_channels=3, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("mlp", num_classes=5, in_channels=3, image_size=32)(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert build_model("resnet18", num_classes=100, in_channels=1).eval()(torch.randn(1, 1, 28, 28)).shape == (1, 100)


def test_errors() -> None:
    with pytest.raises(ValueError) as e:
        build_model("alexnet", num_classes=10)
    assert all(n in str(e.value) for n in MODELS)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", num_classes=0)
    with pytest.raises(ValueError, match="mlp-1d"):
        build_model("mlp", num_classes=10)(torch.randn(2, 40))


def test_model_inputs_cover_registry_and_match_the_shapes() -> None:
    from ies.experiments.models import MODEL_INPUTS

    assert set(MODEL_INPUTS) == set(MODELS), "add every model to MODEL_INPUTS ('1d', 'image', 'tokens')"
    for name, kind in MODEL_INPUTS.items():
        if name in DENSE_MODELS or kind == "tokens":  # tiny-bert: tests/experiments/test_text.py
            continue
        # The shape each model is tested on above: (N, L) for "1d", (N, C, H, W) for "image".
        assert kind == ("1d" if len(CASES[name][1]) == 2 else "image"), name
