"""Models behind a registry (SPEC 4): ResNet-50, NASNet-A Large, NASNet-A Mobile and small CPU models.

Every model is a :class:`Classifier`: a backbone with timm's interface
(``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier()``)
seen through one contract:

- ``forward(x) -> logits`` (f_L(x) of section 2.3),
- ``forward_hidden(x) -> (h, logits)`` with ``h`` the final hidden
  representation (pooled penultimate features, the input of the last linear
  layer) that the regularizers of section 2.3 (eqs. 1-6) act on,
- ``head``: the module g with ``head(h) == logits``,
- ``num_features`` (width of ``h``) and ``default_cfg`` (``mean``, ``std``,
  ``input_size``, ``min_input_size``).

Adding a model is one decorated function here::

    @MODELS.register("my_model")
    def my_model(num_classes, pretrained=False, weights=None, **kwargs) -> Classifier:
        return _timm_classifier("some_timm_name", num_classes, pretrained, weights, **kwargs)

Any timm architecture is also reachable as ``create_model("timm:<name>", ...)``.

NASNet-A Mobile is not in timm: :class:`NASNetAMobile` builds it from timm's
NASNet cells and registers it with timm as ``nasnetamobile``; it loads the
public Cadene ImageNet checkpoint (1001 classes, background at index 0) through
:func:`convert_cadene_nasnet_mobile_state_dict`.
"""

from __future__ import annotations

import math
import os
import re
import socket
import urllib.request
from functools import partial
from typing import Any, Callable, Mapping, Optional
from urllib.parse import urlparse

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import AvgPool2dSame, ConvNormAct, create_classifier, pad_same
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._hub import download_cached_file, has_hf_hub
from timm.models.nasnet import CellStem0, CellStem1, FirstCell, NormalCell, ReductionCell0, ReductionCell1

from backdoor_eval.registry import Registry

__all__ = [
    "MODELS",
    "Classifier",
    "WeightsUnavailableError",
    "create_model",
    "SmallCNN",
    "NASNetAMobile",
    "convert_cadene_nasnet_mobile_state_dict",
    "CADENE_NASNET_MOBILE_URL",
]

MODELS: Registry[Callable[..., "Classifier"]] = Registry("model")

#: Public ImageNet checkpoint of NASNet-A Mobile (Cadene's pretrainedmodels, 1001 classes).
CADENE_NASNET_MOBILE_URL = "http://data.lip6.fr/cadene/pretrainedmodels/nasnetamobile-7e03cead.pth"

#: Seconds to wait for a TCP connection before declaring the weights host unreachable.
PROBE_TIMEOUT_S = float(os.environ.get("BACKDOOR_EVAL_PROBE_TIMEOUT", "3"))

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training images: the from-scratch
# small_cnn normalises with them (any fixed affine map works with BatchNorm).
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class WeightsUnavailableError(ValueError):
    """Pretrained weights were asked for but cannot be had (offline, unreachable host, missing file)."""


# --------------------------------------------------------------------------------------------
# The Classifier contract
# --------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """A backbone with timm's interface, exposing logits, the hidden representation h and the head g.

    Args:
        backbone: module with ``forward_features(x)``, ``forward_head(features, pre_logits=True)``
            (pooled, flattened h) and ``get_classifier()`` (the linear layer g: h -> logits).
        default_cfg: must hold ``mean``, ``std`` (per-channel normalisation the inputs are
            expected to have had) and ``input_size`` ``(3, H, W)`` (the native/pretraining size);
            ``min_input_size`` ``(3, H, W)`` or ``None``: inputs smaller than it in either
            dimension are upsampled (bilinear, inside ``forward``) to at least that size.
        model_name, model_params: how the model was created (for checkpoints).
    """

    def __init__(
        self,
        backbone: nn.Module,
        default_cfg: Mapping[str, Any],
        model_name: str = "",
        model_params: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        for key in ("mean", "std", "input_size"):
            if key not in default_cfg:
                raise ValueError(f"default_cfg lacks {key!r}; it needs mean, std and input_size")
        self.backbone = backbone
        self.num_features = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
        cfg = dict(default_cfg)
        cfg["mean"] = tuple(float(v) for v in cfg["mean"])
        cfg["std"] = tuple(float(v) for v in cfg["std"])
        cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
        min_size = cfg.get("min_input_size")
        cfg["min_input_size"] = None if min_size is None else _as_input_size(min_size)
        self.default_cfg = cfg
        self.model_name = model_name
        self.model_params = dict(model_params or {})

    @property
    def head(self) -> nn.Module:
        """The module g mapping h to logits (the backbone's own classifier, not a copy)."""
        return self.backbone.get_classifier()

    @property
    def num_classes(self) -> int:
        return int(self.head.out_features)

    @property
    def min_input_size(self) -> Optional[tuple[int, int, int]]:
        return self.default_cfg["min_input_size"]

    def fit_input(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` (N, C, H, W) so that H and W reach ``min_input_size``; unchanged otherwise."""
        if self.min_input_size is None:
            return x
        _, min_height, min_width = self.min_input_size
        height, width = x.shape[-2:]
        if height >= min_height and width >= min_width:
            return x
        size = (max(height, min_height), max(width, min_width))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(h, logits)``: h (N, num_features) the pooled penultimate features, logits = head(h)."""
        features = self.backbone.forward_features(self.fit_input(x))
        hidden = self.backbone.forward_head(features, pre_logits=True)
        return hidden, self.head(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_hidden(x)[1]

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_features={self.num_features}, num_classes={self.num_classes}"


def _as_input_size(size: Any) -> tuple[int, int, int]:
    """Normalise an int, (H, W) or (C, H, W) to (3, H, W)."""
    if isinstance(size, int):
        values = (3, size, size)
    else:
        values = tuple(int(v) for v in size)
        if len(values) == 2:
            values = (3, *values)
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"min_input_size={size!r} is invalid; allowed: an int, (H, W) or (C, H, W) of positive ints")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Creation
# --------------------------------------------------------------------------------------------


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: Optional[str | os.PathLike] = None,
    **kwargs: Any,
) -> Classifier:
    """Build a registered model (or ``timm:<name>``) with a fresh head of ``num_classes`` outputs.

    Args:
        name: a name in ``MODELS`` or ``"timm:<any timm model name>"``.
        num_classes: outputs of the new classification head.
        pretrained: load pretrained backbone weights: from ``weights`` when given, else from
            the hub (timm's source for the model). The classification head is always new.
        weights: local file or http(s) URL of a state dict (timm layout, a saved
            ``Classifier`` state dict, or for ``nasnet_mobile`` the Cadene checkpoint).
        **kwargs: passed to the model builder (e.g. ``width`` for ``small_cnn``,
            ``drop_rate`` for timm models); ``min_input_size`` (int, (H, W) or (C, H, W))
            overrides the model's default upsampling threshold, ``None`` disables it.

    Raises:
        ValueError: unknown name, bad ``num_classes``, ``weights`` without ``pretrained``.
        WeightsUnavailableError: pretrained weights cannot be had (offline and not cached,
            missing file); the message says to set ``weights:`` to a local file.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid; allowed: an int >= 1")
    if weights is not None and not pretrained:
        raise ValueError(
            f"weights={str(weights)!r} was given with pretrained=False; set pretrained: true to load it, "
            "or drop weights"
        )
    override_min = "min_input_size" in kwargs
    min_input_size = kwargs.pop("min_input_size", None)
    params = dict(kwargs)
    if name.startswith("timm:"):
        timm_name = name[len("timm:"):]
        if not timm.is_model(timm_name):
            raise ValueError(f"model {name!r}: {timm_name!r} is not a timm model name (see timm.list_models())")
        model = _timm_classifier(timm_name, num_classes, pretrained, weights, label=name, **kwargs)
    elif name in MODELS:
        model = MODELS.get(name)(num_classes, pretrained=pretrained, weights=weights, **kwargs)
    else:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(MODELS.names())}, "
            "or 'timm:<name>' for any timm model"
        )
    if override_min:
        model.default_cfg["min_input_size"] = None if min_input_size is None else _as_input_size(min_input_size)
        params["min_input_size"] = min_input_size
    model.model_name = name
    model.model_params = params
    return model


def _default_cfg_from_timm(backbone: nn.Module, min_input_size: Any = None) -> dict[str, Any]:
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    return {
        "mean": tuple(cfg.get("mean", _IMAGENET_MEAN)),
        "std": tuple(cfg.get("std", _IMAGENET_STD)),
        "input_size": tuple(cfg.get("input_size", (3, 224, 224))),
        "min_input_size": min_input_size,
        "interpolation": cfg.get("interpolation", "bilinear"),
        "architecture": cfg.get("architecture"),
    }


def _timm_classifier(
    timm_name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: Optional[str | os.PathLike] = None,
    min_input_size: Any = None,
    checkpoint_filter: Optional[Callable[[dict, nn.Module], dict]] = None,
    label: Optional[str] = None,
    **kwargs: Any,
) -> Classifier:
    """A timm model as a Classifier, with pretrained weights from the hub or ``weights``.

    ``label`` names the model in error messages (the registry name; default ``timm_name``).
    """
    label = repr(timm_name) if label is None or label == timm_name else f"{label!r} (timm {timm_name})"
    if not pretrained:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    elif weights is not None:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
        state_dict = _read_weights(weights, model_name=label)
        if checkpoint_filter is not None:
            state_dict = checkpoint_filter(state_dict, backbone)
        _load_backbone_weights(backbone, state_dict, source=str(weights), model_name=label)
    else:
        backbone = _timm_from_hub(timm_name, kwargs, label)
        # fresh head: hub weights come with the pretraining task's classifier
        backbone.reset_classifier(num_classes)
    return Classifier(backbone, _default_cfg_from_timm(backbone, min_input_size), model_name=timm_name)


# --------------------------------------------------------------------------------------------
# Registered models
# --------------------------------------------------------------------------------------------


@MODELS.register("resnet50")
def resnet50(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """ResNet-50 (timm ``resnet50``; h has 2048 features). Runs at 32 px natively (final map 1x1).

    Hub weights: ``tv_in1k``, the PyTorch model zoo weights the paper names (section 4.3),
    not timm's default ``a1_in1k`` (use ``timm:resnet50.a1_in1k`` for those).
    """
    return _timm_classifier("resnet50.tv_in1k", num_classes, pretrained, weights, label="resnet50", **kwargs)


@MODELS.register("resnet18")
def resnet18(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """ResNet-18 (timm ``resnet18``, PyTorch model zoo weights ``tv_in1k``; 512 features): a mid-size option."""
    return _timm_classifier("resnet18.tv_in1k", num_classes, pretrained, weights, label="resnet18", **kwargs)


@MODELS.register("nasnet_large")
def nasnet_large(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """NASNet-A Large, 6 @ 4032 (timm ``nasnetalarge``; pretraining size 331 px).

    kwargs reach timm's ``NASNetALarge`` (``num_features``, ``stem_size`` shrink it for tests).
    """
    return _timm_classifier("nasnetalarge", num_classes, pretrained, weights, label="nasnet_large", **kwargs)


@MODELS.register("nasnet_mobile")
def nasnet_mobile(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """NASNet-A Mobile, 4 @ 1056 (:class:`NASNetAMobile`, timm ``nasnetamobile``; 224 px).

    ``weights`` may be the Cadene checkpoint ``nasnetamobile-7e03cead.pth`` or its URL;
    kwargs (``cells_per_stage``, ``num_features``, ``stem_size``, ``drop_rate``) reach the model.
    """
    return _timm_classifier(
        "nasnetamobile", num_classes, pretrained, weights, checkpoint_filter=convert_cadene_nasnet_mobile_state_dict,
        label="nasnet_mobile", **kwargs,
    )


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
        _load_backbone_weights(backbone, _read_weights(weights, "'small_cnn'"), str(weights), "'small_cnn'")
    cfg = {
        "mean": _CIFAR10_MEAN,
        "std": _CIFAR10_STD,
        "input_size": (3, 32, 32),
        "min_input_size": min_input_size,
        "interpolation": "bilinear",
        "architecture": "small_cnn",
    }
    return Classifier(backbone, cfg, model_name="small_cnn")


# --------------------------------------------------------------------------------------------
# small_cnn
# --------------------------------------------------------------------------------------------


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
        self.global_pool, self.head_drop, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )

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


# --------------------------------------------------------------------------------------------
# NASNet-A Mobile from timm's NASNet cells
# --------------------------------------------------------------------------------------------


class _TFSameAvgPool2d(nn.Module):
    """Average pooling with TF "SAME" padding that leaves the padding out of the count (as TF does)."""

    def __init__(self, kernel_size: Any, stride: Any):
        super().__init__()
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size,) * 2
        self.stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride,) * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = pad_same(x, self.kernel_size, self.stride)
        # the share of real (unpadded) pixels in each window
        coverage = pad_same(torch.ones_like(x[:1, :1]), self.kernel_size, self.stride)
        return F.avg_pool2d(padded, self.kernel_size, self.stride) / F.avg_pool2d(
            coverage, self.kernel_size, self.stride
        )


class NASNetAMobile(nn.Module):
    """NASNet-A Mobile, "4 @ 1056" (Zoph et al. 2018), built from ``timm.models.nasnet`` cells.

    Stem (3x3 stride-2 conv to ``stem_size`` filters, two reduction stem cells), then three
    stages of ``cells_per_stage`` cells (a FirstCell followed by NormalCells) separated by
    two reduction cells. The stage filters are ``num_features // 24`` times 1, 2, 4; each
    cell's output has 6x its filters, so the last stage outputs ``num_features`` channels.
    Each cell takes the two previous layers' outputs; the cell after a reduction cell takes
    the reduction cell's input as its second input (as in the TF reference and the Cadene
    port whose weights this loads).

    Cells are numbered consecutively, ``cell_0`` ... ``cell_{3 * cells_per_stage - 1}``, as in
    the TF checkpoints; the Cadene checkpoint numbers them 0-3, 6-9, 12-15 and
    :func:`convert_cadene_nasnet_mobile_state_dict` renames them.

    ``pad_type='same'`` (TF "SAME" padding, as timm's ``nasnetalarge``) reproduces the
    Cadene port's explicit pad-and-crop at stride 2. timm's stride-2 "same" average pools
    count their zero padding; they are swapped for :class:`_TFSameAvgPool2d`, which does not
    (as TF and the Cadene port), so with the Cadene weights this model computes what the
    Cadene model computes (to float rounding, at 224 px and 32 px).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_size: int = 32,
        num_features: int = 1056,
        channel_multiplier: int = 2,
        cells_per_stage: int = 4,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        pad_type: str = "same",
        output_stride: int = 32,
    ):
        super().__init__()
        if output_stride != 32:
            raise ValueError(f"output_stride={output_stride!r} is not supported; allowed: 32")
        if isinstance(cells_per_stage, bool) or not isinstance(cells_per_stage, int) or cells_per_stage < 1:
            raise ValueError(f"cells_per_stage={cells_per_stage!r} is invalid; allowed: an int >= 1")
        if not isinstance(channel_multiplier, int) or channel_multiplier < 1:
            raise ValueError(f"channel_multiplier={channel_multiplier!r} is invalid; allowed: an int >= 1")
        # stage filters (num_features / 24) must split into stem filters (/ multiplier^2) and halves
        granule = 24 * math.lcm(2, channel_multiplier**2)
        if not isinstance(num_features, int) or num_features < granule or num_features % granule:
            raise ValueError(
                f"num_features={num_features!r} is invalid; allowed: a positive multiple of {granule} "
                f"(24 x lcm(2, channel_multiplier^2)), e.g. 1056"
            )
        if not isinstance(stem_size, int) or stem_size < 1:
            raise ValueError(f"stem_size={stem_size!r} is invalid; allowed: an int >= 1")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.cells_per_stage = cells_per_stage
        filters = num_features // 24
        conv_kwargs = dict(pad_type=pad_type)

        self.conv0 = ConvNormAct(
            in_chans, stem_size, kernel_size=3, stride=2, padding=0,
            norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1), apply_act=False,
        )
        stem_0_filters = filters // channel_multiplier**2
        stem_1_filters = filters // channel_multiplier
        self.cell_stem_0 = CellStem0(stem_size, num_channels=stem_0_filters, **conv_kwargs)
        self.cell_stem_1 = CellStem1(stem_size, num_channels=stem_1_filters, **conv_kwargs)

        # channels of (x_prev, x) entering the next cell; reduction cells emit 4 branches,
        # normal/first cells 6 (5 branches + the left input, 2 x half filters for FirstCell)
        prev_channels, channels = 4 * stem_0_filters, 4 * stem_1_filters
        self.layer_names: list[str] = []
        feature_info = [dict(num_chs=stem_size, reduction=2, module="conv0")]
        cell_index = 0
        for stage in range(3):
            stage_filters = filters * 2**stage
            if stage > 0:
                name = f"reduction_cell_{stage - 1}"
                reduction_cls = ReductionCell0 if stage == 1 else ReductionCell1
                setattr(self, name, reduction_cls(
                    in_chs_left=prev_channels, out_chs_left=stage_filters,
                    in_chs_right=channels, out_chs_right=stage_filters, **conv_kwargs,
                ))
                feature_info.append(dict(num_chs=channels, reduction=2 ** (stage + 2), module=f"{name}.conv_1x1.act"))
                self.layer_names.append(name)
                prev_channels, channels = channels, 4 * stage_filters
            else:
                feature_info.append(dict(num_chs=channels, reduction=4, module="cell_stem_1.conv_1x1.act"))
            for position in range(cells_per_stage):
                name = f"cell_{cell_index}"
                if position == 0:
                    cell = FirstCell(
                        in_chs_left=prev_channels, out_chs_left=stage_filters // 2,
                        in_chs_right=channels, out_chs_right=stage_filters, **conv_kwargs,
                    )
                else:
                    cell = NormalCell(
                        in_chs_left=prev_channels, out_chs_left=stage_filters,
                        in_chs_right=channels, out_chs_right=stage_filters, **conv_kwargs,
                    )
                setattr(self, name, cell)
                self.layer_names.append(name)
                prev_channels, channels = channels, 6 * stage_filters
                cell_index += 1
        assert channels == num_features, (channels, num_features)
        self.act = nn.ReLU(inplace=True)
        feature_info.append(dict(num_chs=num_features, reduction=32, module="act"))
        self.feature_info = feature_info
        self.global_pool, self.head_drop, self.last_linear = create_classifier(
            num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )
        for module in list(self.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, AvgPool2dSame):
                    setattr(module, child_name, _TFSameAvgPool2d(child.kernel_size, child.stride))

    def get_classifier(self) -> nn.Module:
        return self.last_linear

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x_conv0 = self.conv0(x)
        x_stem_0 = self.cell_stem_0(x_conv0)
        x_prev, x = x_stem_0, self.cell_stem_1(x_conv0, x_stem_0)
        for name in self.layer_names:
            # the same rule for every cell, reduction cells included: (x, x_prev) <- (cell(x, x_prev), x)
            x_prev, x = x, getattr(self, name)(x, x_prev)
        return self.act(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_CELL_KEY = re.compile(r"^cell_(\d+)\.")


def convert_cadene_nasnet_mobile_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: Optional[nn.Module] = None
) -> dict[str, torch.Tensor]:
    """Map a Cadene ``NASNetAMobile`` state dict (pretrainedmodels) onto :class:`NASNetAMobile` keys.

    Cadene numbers the cells of stage s as ``cell_{6s + k}`` (0-3, 6-9, 12-15, the
    numbering of its NASNet-A Large); here they are consecutive, ``cell_{n s + k}`` with
    n cells a stage. All other names are the same (timm's cells keep Cadene's layer names,
    ReLUs carry no parameters). A ``module.`` prefix (DataParallel) is dropped and BatchNorm
    ``num_batches_tracked`` counters that pre-0.4.1 checkpoints lack are filled with 0.
    A state dict already in this layout is returned unchanged (it is the timm filter fn).
    """
    cells_per_stage = getattr(model, "cells_per_stage", 4)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    cell_indices = {int(m.group(1)) for m in map(_CELL_KEY.match, state) if m}
    cadene = {6 * stage + k for stage in range(3) for k in range(cells_per_stage)}
    if cell_indices == cadene and cadene != set(range(3 * cells_per_stage)):
        def rename(key: str) -> str:
            match = _CELL_KEY.match(key)
            if not match:
                return key
            stage, position = divmod(int(match.group(1)), 6)
            return f"cell_{stage * cells_per_stage + position}." + key[match.end():]

        state = {rename(k): v for k, v in state.items()}
    for key in [k for k in state if k.endswith(".running_var")]:
        counter = key[: -len("running_var")] + "num_batches_tracked"
        state.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return state


def _create_nasnet_mobile(variant: str, pretrained: bool = False, **kwargs: Any) -> NASNetAMobile:
    return build_model_with_cfg(
        NASNetAMobile,
        variant,
        pretrained,
        pretrained_filter_fn=convert_cadene_nasnet_mobile_state_dict,
        feature_cfg=dict(feature_cls="hook", no_rewrite=True),
        **kwargs,
    )


# read by timm's register_model (it looks up `default_cfgs` in the decorated function's module)
default_cfgs = generate_default_cfgs({
    "nasnetamobile.cadene_in1k": {
        "url": CADENE_NASNET_MOBILE_URL,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "num_classes": 1000,
        "label_offset": 1,  # the checkpoint has 1001 outputs, background first
        "first_conv": "conv0.conv",
        "classifier": "last_linear",
    },
})


@register_model
def nasnetamobile(pretrained: bool = False, **kwargs: Any) -> NASNetAMobile:
    """NASNet-A Mobile (4 @ 1056), ImageNet weights from Cadene's pretrainedmodels."""
    return _create_nasnet_mobile("nasnetamobile", pretrained, **kwargs)


# --------------------------------------------------------------------------------------------
# Pretrained weights: local files, URLs, the hub; fast and clear when offline
# --------------------------------------------------------------------------------------------


def _offline_flag() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _host_reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the URL's host (or the configured proxy) opens within ``timeout`` s."""
    parts = urlparse(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _unavailable(model_name: str, why: str) -> WeightsUnavailableError:
    """The error for weights that cannot be had; ``model_name`` comes quoted (see _timm_classifier)."""
    return WeightsUnavailableError(
        f"pretrained weights for model {model_name} cannot be loaded: {why}. "
        "Set weights: to a local file of the weights (or use pretrained: false)"
    )


def _url_cache_path(url: str) -> str:
    """Where timm (and torch.hub) cache a downloaded checkpoint: <torch hub dir>/checkpoints/<file name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _download(url: str, model_name: str) -> str:
    """Path of ``url`` in timm's cache, downloading it first when it is not there."""
    cached = _url_cache_path(url)
    if os.path.isfile(cached):
        return cached
    if _offline_flag():
        raise _unavailable(model_name, f"{url} is not cached and HF_HUB_OFFLINE is set")
    if not _host_reachable(url):
        raise _unavailable(model_name, f"{urlparse(url).hostname} is unreachable within {PROBE_TIMEOUT_S:g} s")
    try:
        return download_cached_file(url, check_hash=True)
    except Exception as error:  # network and HTTP errors come in many types
        raise _unavailable(model_name, f"download of {url} failed ({type(error).__name__}: {error})") from error


def _read_weights(weights: str | os.PathLike, model_name: str) -> dict[str, torch.Tensor]:
    """State dict from a local file or URL; unwraps ``state_dict``/``model`` entries and ``backbone.``."""
    location = str(weights)
    if urlparse(location).scheme in ("http", "https"):
        path = _download(location, model_name)
    else:
        path = os.path.expanduser(location)
        if not os.path.isfile(path):
            raise _unavailable(model_name, f"weights file {location!r} does not exist")
    try:
        state_dict = timm.models.load_state_dict(path)
    except Exception as error:
        raise _unavailable(model_name, f"{location!r} is not a readable state dict ({error})") from error
    if state_dict and all(k.startswith("backbone.") for k in state_dict):
        # a saved Classifier: its backbone's own state dict
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items()}
    return state_dict


def _load_backbone_weights(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, model_name: str):
    """Load every backbone tensor from ``state_dict`` (strictly); the classifier stays freshly initialised."""
    classifier = backbone.get_classifier()
    classifier_prefixes = tuple(f"{n}." for n, m in backbone.named_modules() if m is classifier and n)
    kept = {k: v for k, v in state_dict.items() if not k.startswith(classifier_prefixes)}
    try:
        result = backbone.load_state_dict(kept, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"weights {source!r} do not fit model {model_name}: {error}") from error
    missing = [k for k in result.missing_keys if not k.startswith(classifier_prefixes)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights {source!r} do not fit model {model_name}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
        )


def _cached_hub_file(pretrained_cfg: Any) -> Optional[str]:
    """A local copy of the model's default weights, if the HF or torch-hub cache holds one."""
    hf_hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if hf_hub_id and has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo_id, _, revision = hf_hub_id.partition("@")
        names = [pretrained_cfg.hf_hub_filename] if pretrained_cfg.hf_hub_filename else []
        names += ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = getattr(pretrained_cfg, "url", None)
    if url:
        cached = _url_cache_path(url)
        if os.path.isfile(cached):
            return cached
    return None


def _timm_from_hub(timm_name: str, kwargs: Mapping[str, Any], label: str) -> nn.Module:
    """timm model with its default pretrained weights (with the pretraining head), failing fast offline."""
    pretrained_cfg = timm.models.get_pretrained_cfg(timm_name)
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise _unavailable(label, "timm knows no pretrained weights for it")
    # create with the pretraining classes so that timm loads strictly (head included)
    create = partial(timm.create_model, timm_name, pretrained=True, num_classes=pretrained_cfg.num_classes, **kwargs)
    cached = _cached_hub_file(pretrained_cfg)
    if cached is not None:
        return create(pretrained_cfg_overlay=dict(file=cached))
    if pretrained_cfg.hf_hub_id and has_hf_hub():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where = f"Hugging Face hub repo {pretrained_cfg.hf_hub_id}"
    else:
        endpoint = pretrained_cfg.url
        where = pretrained_cfg.url
    if _offline_flag():
        raise _unavailable(label, f"{where} is not cached and HF_HUB_OFFLINE is set")
    if not _host_reachable(endpoint):
        raise _unavailable(label, f"{where} is unreachable ({urlparse(endpoint).hostname} accepted "
                                  f"no connection within {PROBE_TIMEOUT_S:g} s)")
    try:
        return create()
    except Exception as error:  # hub, HTTP and file errors come in many types
        raise _unavailable(label, f"loading from {where} failed ({type(error).__name__}: {error})") from error
