"""Model zoo for the IES experiments (plain PyTorch, no torchvision).

* ``mnist1d-cnn`` / ``mlp-1d``: the MNIST-1D paper's CNN and MLP on ``(N, L)`` signals.
* ``mlp`` / ``small-cnn``: small image models for Fashion-MNIST-sized ``(N, C, H, W)``.
* ``resnet18/34/50/101``, ``vgg16``, ``densenet121``: CIFAR variants (3x3 stem, no
  max-pool in the stem), in the style of kuangliu/pytorch-cifar.

Use :func:`build_model`; :data:`MODELS` maps each name to its builder and
:data:`MODEL_INPUTS` to the kind of input it takes (``"1d"`` or ``"image"``).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .dense.models import DENSE_MODEL_INPUTS, DENSE_MODELS
from .text import build_tiny_bert

__all__ = [
    "MODELS",
    "MODEL_INPUTS",
    "build_model",
    "MNIST1DCNN",
    "MLP",
    "SmallCNN",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "VGG",
    "DenseNet",
]


# ----------------------------------------------------------------------------- MNIST-1D


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN (Greydanus, 2020): three strided 1-D convs + linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, input_length: int = 40, channels: int = 25):
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        # Output length of each conv: floor((L + 2p - k) / s) + 1; 40 -> 19 -> 10 -> 5.
        length = input_length
        for k in (5, 3, 3):
            length = (length + 2 - k) // 2 + 1
        if length < 1:
            raise ValueError(f"input_length={input_length} is too short for mnist1d-cnn; use input_length >= 3")
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # (N, L) -> (N, 1, L)
            x = x.unsqueeze(1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))  # (N, 25, 5) for L = 40
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """Two hidden layers of ``hidden`` ReLU units on the flattened input."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 100):
        super().__init__()
        self.in_features = in_features
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # (N, ...) -> (N, in_features)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"MLP expects {self.in_features} input features per sample, got {x.shape[1]}; "
                "use 'mlp-1d' with input_length for (N, L) signals, or 'mlp' with the right "
                "in_channels/image_size for images"
            )
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-maxpool stages + MLP head, for 28x28 (Fashion-MNIST) images.

    An adaptive average pool to the full-size feature map (7x7 for 28x28) sits before the
    head: the identity at full size, and it lets resolution curricula feed smaller images.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size={image_size} is too small for small-cnn; use image_size >= 4")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = (image_size // 2) // 2  # 28 -> 14 -> 7
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))  # (N, 64, 7, 7) -> (N, 3136)


# ----------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with an identity or projection shortcut."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem (no max-pool), four stages at strides 1/2/2/2, global pool."""

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        num_blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: Type[Union[BasicBlock, Bottleneck]], planes: int, n: int, stride: int) -> nn.Sequential:
        layers: List[nn.Module] = []
        for s in [stride] + [1] * (n - 1):  # only the first block of a stage downsamples
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (N, 64, 32, 32)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (N, 512*exp, 4, 4)
        return self.linear(self.pool(out).flatten(1))


# ----------------------------------------------------------------------------- VGG

_VGG16_CFG: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG with batch norm; a single linear classifier after a global 1x1 average pool."""

    def __init__(self, cfg: Sequence[Union[int, str]], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: List[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # 32x32 input is already 1x1 here; makes other sizes work
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


# ----------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4*growth) then BN-ReLU-3x3 (growth); output concatenated to input."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)  # (N, C + growth, H, W)


class _Transition(nn.Module):
    """BN-ReLU-1x1 channel reduction, then 2x2 average pool."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC: 3x3 stem of 2*growth channels, reduction 0.5 between blocks."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        growth_rate: int = 32,
        reduction: float = 0.5,
        num_classes: int = 10,
        in_channels: int = 3,
    ):
        super().__init__()
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        stages: List[nn.Module] = []
        for i, n in enumerate(num_blocks):
            layers: List[nn.Module] = []
            for _ in range(n):
                layers.append(_DenseLayer(planes, growth_rate))
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if i < len(num_blocks) - 1:  # transitions between dense blocks, not after the last
                out_planes = int(planes * reduction)
                stages.append(_Transition(planes, out_planes))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(self.conv1(x))  # (N, 1024, 4, 4) for densenet121 on 32x32
        out = F.relu(self.bn(out))
        return self.linear(self.pool(out).flatten(1))


# ----------------------------------------------------------------------------- registry

Builder = Callable[..., nn.Module]


def _mnist1d_cnn(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return MNIST1DCNN(num_classes=num_classes, in_channels=in_channels, input_length=input_length)


def _mlp_1d(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return MLP(in_channels * input_length, num_classes)


def _mlp(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return MLP(in_channels * image_size * image_size, num_classes)


def _small_cnn(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def _resnet(block: Type[Union[BasicBlock, Bottleneck]], blocks: Sequence[int]) -> Builder:
    def build(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
        return ResNet(block, blocks, num_classes=num_classes, in_channels=in_channels)

    return build


def _vgg16(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return VGG(_VGG16_CFG, num_classes=num_classes, in_channels=in_channels)


def _densenet121(*, num_classes: int, in_channels: int, input_length: int, image_size: int) -> nn.Module:
    return DenseNet([6, 12, 24, 16], growth_rate=32, num_classes=num_classes, in_channels=in_channels)


MODELS: Dict[str, Builder] = {
    "mnist1d-cnn": _mnist1d_cnn,  # (N, L) signals
    "mlp-1d": _mlp_1d,  # (N, L) signals
    "mlp": _mlp,  # (N, C, image_size, image_size) images
    "small-cnn": _small_cnn,  # (N, C, 28, 28) images
    "resnet18": _resnet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": _resnet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": _resnet(Bottleneck, [3, 4, 6, 3]),
    "resnet101": _resnet(Bottleneck, [3, 4, 23, 3]),
    "vgg16": _vgg16,
    "densenet121": _densenet121,
    "tiny-bert": build_tiny_bert,  # (N, L) token ids: transformers' BERT from a config (text.py)
    **DENSE_MODELS,  # deeplab-mini (segmentation), centernet-mini (detection): dense/models.py
}

# The kind of input each model takes: "1d" = (N, L) signals, "image" = (N, C, H, W) images.
# RunConfig.validate compares it with the dataset's kind (data.DATASET_INPUTS), so a 1-D dataset
# with an image model is refused before training instead of failing inside the first forward.
MODEL_INPUTS: Dict[str, str] = {
    "mnist1d-cnn": "1d",
    "mlp-1d": "1d",
    **{m: "image" for m in ("mlp", "small-cnn", "resnet18", "resnet34", "resnet50", "resnet101", "vgg16",
                            "densenet121")},
    "tiny-bert": "tokens",
    **DENSE_MODEL_INPUTS,
}


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 1,
    input_length: int = 40,
    image_size: int = 28,
) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`).

    ``input_length`` sizes the 1-D models (``mnist1d-cnn``, ``mlp-1d``); ``image_size``
    sizes the image ``mlp`` and ``small-cnn``. The CIFAR nets pool globally and ignore both.
    """
    key = name.lower().strip()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    for arg, val in (("num_classes", num_classes), ("in_channels", in_channels), ("input_length", input_length), ("image_size", image_size)):
        if int(val) < 1:
            raise ValueError(f"{arg} must be a positive integer, got {val}; pass e.g. {arg}=10")
    return MODELS[key](
        num_classes=int(num_classes),
        in_channels=int(in_channels),
        input_length=int(input_length),
        image_size=int(image_size),
    )
