"""``small_cnn``: a compact ResNet-9-style network for fast from-scratch training on CPU (docs/decisions.md#models)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .classifier import Classifier
from .registry import MODELS
from .weights import WeightsUnavailableError, load_backbone_weights, read_weights

__all__ = ["SmallCNN"]

# Per-channel statistics of the CIFAR-10 training images: the from-scratch
# small_cnn normalises with them (any fixed affine map works with BatchNorm).
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _classifier(num_features: int, num_classes: int, pool_type: str, drop_rate: float):
    """(global pool + flatten, dropout, linear): the modules, parameters and initialisation of timm's
    ``create_classifier`` for ``avg`` and ``max``, built from torch alone (timm's import alone is ~2 s of
    a job's start-up); any other pool type is timm's own."""
    if pool_type not in ("avg", "max"):
        from timm.layers import create_classifier

        return create_classifier(num_features, num_classes, pool_type=pool_type, drop_rate=drop_rate)
    pool = nn.AdaptiveAvgPool2d(1) if pool_type == "avg" else nn.AdaptiveMaxPool2d(1)
    return nn.Sequential(pool, nn.Flatten(1)), nn.Dropout(drop_rate), nn.Linear(num_features, num_classes)


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SmallCNN(nn.Module):
    """A compact ResNet-9-style CIFAR network (the DAWNBench layout) with a ``width`` knob.

    Layout (w = width): conv(w) | conv(2w), pool, residual(2w) | conv(4w), pool |
    conv(8w), pool, residual(8w) | global pool -> h (8w) -> linear. Three 2x poolings,
    so 32x32 inputs end at 4x4 and any size at least 8 px works.
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 16,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
    ):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r} is invalid; allowed: an int >= 1")
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate={drop_rate!r} is invalid; allowed: 0 <= drop_rate < 1")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = 8 * width
        self.stem = _conv_bn_relu(in_chans, width)
        self.layer1 = nn.Sequential(_conv_bn_relu(width, 2 * width), nn.MaxPool2d(2), _Residual(2 * width))
        self.layer2 = nn.Sequential(_conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn_relu(4 * width, 8 * width), nn.MaxPool2d(2), _Residual(8 * width))
        self.global_pool, self.head_drop, self.fc = _classifier(self.num_features, num_classes, global_pool, drop_rate)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """:class:`SmallCNN` (ResNet-9 layout, ``width`` 16 by default): fast from-scratch training on CPU.

    No hub weights exist: ``pretrained`` needs ``weights`` (a file or URL of its state dict).
    """
    min_input_size = kwargs.pop("min_input_size", None)
    backbone = SmallCNN(num_classes=num_classes, **kwargs)
    if pretrained:
        if weights is None:
            raise WeightsUnavailableError(
                "model 'small_cnn' has no hub weights; set weights: to a local file (or URL) of its state dict, "
                "or use pretrained: false"
            )
        load_backbone_weights(backbone, read_weights(weights, "'small_cnn'"), str(weights), "'small_cnn'")
    cfg = {
        "mean": _CIFAR10_MEAN,
        "std": _CIFAR10_STD,
        "input_size": (3, 32, 32),
        "min_input_size": min_input_size,
        "interpolation": "bilinear",
        "architecture": "small_cnn",
    }
    return Classifier(backbone, cfg, model_name="small_cnn")
