"""``create_model``: a registered model (or any timm model) with a fresh head (docs/decisions.md#models)."""

from __future__ import annotations

import os
from typing import Any

from .classifier import Classifier, as_input_size
from .registry import MODELS
from .timm_models import TIMM_PREFIX, any_timm_classifier
from .weights import save_backbone_weights

__all__ = ["create_model", "fetch_weights"]


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
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
    if name.startswith(TIMM_PREFIX):
        model = any_timm_classifier(name, num_classes, pretrained, weights, **kwargs)
    else:
        model = MODELS.create(name, num_classes=num_classes, pretrained=pretrained, weights=weights, **kwargs)
    if override_min:
        model.default_cfg["min_input_size"] = None if min_input_size is None else as_input_size(min_input_size)
        params["min_input_size"] = min_input_size
    model.model_name = name
    model.model_params = params
    return model


def fetch_weights(name: str, out: str | os.PathLike, source: str | os.PathLike | None = None) -> int:
    """Write model ``name``'s pretrained backbone weights to ``out`` (safetensors, classifier left out).

    ``source`` ``None``: the model's hub weights (the Hugging Face or torch-hub cache, else downloaded);
    else a local file or URL of a checkpoint ``create_model(..., weights=source)`` accepts (timm layout,
    a saved ``Classifier``, Cadene's NASNet-A Mobile), checked to fit. The file loads back with
    ``create_model(name, ..., pretrained=True, weights=out)`` and never needs the network: what the
    workflow's ``fetch_weights`` rule runs on the submitting node. Returns the number of tensors written.
    """
    if not str(out).endswith(".safetensors"):  # before any download
        raise ValueError(f"weights file {out} must end in .safetensors (it is read by its extension)")
    model = create_model(name, num_classes=1, pretrained=True, weights=source)
    backbone = model.backbone
    if source is None:
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        source = cfg.get("hf_hub_id") or cfg.get("url") or "hub"
    return save_backbone_weights(backbone, out, model=name, source=str(source))
