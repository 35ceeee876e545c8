"""timm models as Classifiers: ResNet-50, ResNet-18, NASNet-A Large, NASNet-A Mobile and any timm architecture.

:func:`timm_classifier` wraps a timm model (pretrained weights from the hub or a ``weights``
file, a fresh head of ``num_classes`` outputs) and is what the builders here call.
``create_model("timm:<name>", ...)`` reaches any timm architecture through
:func:`any_timm_classifier` (docs/decisions.md#models).

timm (and torchvision, which it imports: about 2 s of a job's start-up on a CPU) is
imported inside the functions that build a model, not here: registering these builders
costs nothing, so the registry check of the workflow and a small-CNN job never load it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from .classifier import Classifier
from .registry import MODELS
from .weights import load_backbone_weights, read_weights, timm_from_hub

__all__ = ["TIMM_PREFIX", "any_timm_classifier", "timm_classifier"]

#: ``create_model`` names starting with it name any timm model: ``"timm:<timm model name>"``.
TIMM_PREFIX = "timm:"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


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


def timm_classifier(
    timm_name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    min_input_size: Any = None,
    checkpoint_filter: Callable[[dict, nn.Module], dict] | None = None,
    label: str | None = None,
    **kwargs: Any,
) -> Classifier:
    """A timm model as a Classifier, with pretrained weights from the hub or ``weights``.

    ``label`` names the model in error messages (the registry name; default ``timm_name``).
    """
    import timm

    label = repr(timm_name) if label is None or label == timm_name else f"{label!r} (timm {timm_name})"
    if not pretrained:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    elif weights is not None:
        backbone = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
        state_dict = read_weights(weights, model_name=label)
        if checkpoint_filter is not None:
            state_dict = checkpoint_filter(state_dict, backbone)
        load_backbone_weights(backbone, state_dict, source=str(weights), model_name=label)
    else:
        backbone = timm_from_hub(timm_name, kwargs, label)
        # fresh head: hub weights come with the pretraining task's classifier
        backbone.reset_classifier(num_classes)
    return Classifier(backbone, _default_cfg_from_timm(backbone, min_input_size), model_name=timm_name)


def any_timm_classifier(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Classifier:
    """``name`` = ``"timm:<timm model name>"`` (a tag picks weights: ``timm:resnet50.a1_in1k``) as a Classifier."""
    import timm

    from .nasnet_mobile import NASNetAMobile  # noqa: F401  (the import registers ``nasnetamobile`` with timm)

    timm_name = name[len(TIMM_PREFIX) :]
    if not timm.is_model(timm_name):
        raise ValueError(f"model {name!r}: {timm_name!r} is not a timm model name (see timm.list_models())")
    return timm_classifier(timm_name, num_classes, pretrained, weights, label=name, **kwargs)


# --------------------------------------------------------------------------------------------
# Registered models
# --------------------------------------------------------------------------------------------


@MODELS.register("resnet50")
def resnet50(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """ResNet-50 (timm ``resnet50``; h has 2048 features). Runs at 32 px natively (final map 1x1).

    Hub weights: ``tv_in1k``, the PyTorch model zoo weights the paper names (section 4.3),
    not timm's default ``a1_in1k`` (use ``timm:resnet50.a1_in1k`` for those).
    """
    return timm_classifier("resnet50.tv_in1k", num_classes, pretrained, weights, label="resnet50", **kwargs)


@MODELS.register("resnet18")
def resnet18(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """ResNet-18 (timm ``resnet18``, PyTorch model zoo weights ``tv_in1k``; 512 features): a mid-size option."""
    return timm_classifier("resnet18.tv_in1k", num_classes, pretrained, weights, label="resnet18", **kwargs)


@MODELS.register("nasnet_large")
def nasnet_large(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """NASNet-A Large, 6 @ 4032 (timm ``nasnetalarge``; pretraining size 331 px).

    kwargs reach timm's ``NASNetALarge`` (``num_features``, ``stem_size`` shrink it for tests).
    """
    return timm_classifier("nasnetalarge", num_classes, pretrained, weights, label="nasnet_large", **kwargs)


@MODELS.register("nasnet_mobile")
def nasnet_mobile(num_classes: int, pretrained: bool = False, weights=None, **kwargs: Any) -> Classifier:
    """NASNet-A Mobile, 4 @ 1056 (:class:`~backdoor_eval.models.nasnet_mobile.NASNetAMobile`, timm
    ``nasnetamobile``; 224 px).

    ``weights`` may be the Cadene checkpoint ``nasnetamobile-7e03cead.pth`` or its URL;
    kwargs (``cells_per_stage``, ``num_features``, ``stem_size``, ``drop_rate``) reach the model.
    """
    # imported here: the architecture module needs timm, and importing it registers it with timm
    from .nasnet_mobile import convert_cadene_nasnet_mobile_state_dict

    return timm_classifier(
        "nasnetamobile",
        num_classes,
        pretrained,
        weights,
        checkpoint_filter=convert_cadene_nasnet_mobile_state_dict,
        label="nasnet_mobile",
        **kwargs,
    )
