"""NASNet-A Mobile (4 @ 1056) from timm's NASNet cells, registered with timm as ``nasnetamobile``.

timm has no NASNet-A Mobile: :class:`NASNetAMobile` assembles it from ``timm.models.nasnet``
cells. It loads the public Cadene ImageNet checkpoint (1001 classes, background at index 0)
through :func:`convert_cadene_nasnet_mobile_state_dict`. The ``nasnet_mobile`` builder of
``MODELS`` (in ``timm_models``) imports this module when it builds one, and wraps it as a
Classifier (docs/decisions.md#models): this module needs timm, which only timm models load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import AvgPool2dSame, ConvNormAct, create_classifier, pad_same
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.nasnet import CellStem0, CellStem1, FirstCell, NormalCell, ReductionCell0, ReductionCell1

__all__ = ["CADENE_NASNET_MOBILE_URL", "NASNetAMobile", "convert_cadene_nasnet_mobile_state_dict"]

#: Public ImageNet checkpoint of NASNet-A Mobile (Cadene's pretrainedmodels, 1001 classes).
CADENE_NASNET_MOBILE_URL = "http://data.lip6.fr/cadene/pretrainedmodels/nasnetamobile-7e03cead.pth"


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
            in_chans,
            stem_size,
            kernel_size=3,
            stride=2,
            padding=0,
            norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1),
            apply_act=False,
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
                setattr(
                    self,
                    name,
                    reduction_cls(
                        in_chs_left=prev_channels,
                        out_chs_left=stage_filters,
                        in_chs_right=channels,
                        out_chs_right=stage_filters,
                        **conv_kwargs,
                    ),
                )
                feature_info.append(dict(num_chs=channels, reduction=2 ** (stage + 2), module=f"{name}.conv_1x1.act"))
                self.layer_names.append(name)
                prev_channels, channels = channels, 4 * stage_filters
            else:
                feature_info.append(dict(num_chs=channels, reduction=4, module="cell_stem_1.conv_1x1.act"))
            for position in range(cells_per_stage):
                name = f"cell_{cell_index}"
                if position == 0:
                    cell = FirstCell(
                        in_chs_left=prev_channels,
                        out_chs_left=stage_filters // 2,
                        in_chs_right=channels,
                        out_chs_right=stage_filters,
                        **conv_kwargs,
                    )
                else:
                    cell = NormalCell(
                        in_chs_left=prev_channels,
                        out_chs_left=stage_filters,
                        in_chs_right=channels,
                        out_chs_right=stage_filters,
                        **conv_kwargs,
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

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
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
    state_dict: Mapping[str, torch.Tensor], model: nn.Module | None = None
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
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    cell_indices = {int(m.group(1)) for m in map(_CELL_KEY.match, state) if m}
    cadene = {6 * stage + k for stage in range(3) for k in range(cells_per_stage)}
    if cell_indices == cadene and cadene != set(range(3 * cells_per_stage)):

        def rename(key: str) -> str:
            match = _CELL_KEY.match(key)
            if not match:
                return key
            stage, position = divmod(int(match.group(1)), 6)
            return f"cell_{stage * cells_per_stage + position}." + key[match.end() :]

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
default_cfgs = generate_default_cfgs(
    {
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
    }
)


@register_model
def nasnetamobile(pretrained: bool = False, **kwargs: Any) -> NASNetAMobile:
    """NASNet-A Mobile (4 @ 1056), ImageNet weights from Cadene's pretrainedmodels."""
    return _create_nasnet_mobile("nasnetamobile", pretrained, **kwargs)
