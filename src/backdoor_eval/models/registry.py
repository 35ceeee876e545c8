"""The model registry: name -> builder ``(num_classes, pretrained=False, weights=None, **kwargs) -> Classifier``.

Each architecture module registers its builders here (``@MODELS.register("name")``);
:func:`backdoor_eval.models.create_model` looks them up.
"""

from __future__ import annotations

from collections.abc import Callable

from backdoor_eval.registry import Registry

from .classifier import Classifier

__all__ = ["MODELS"]

MODELS: Registry[Callable[..., Classifier]] = Registry("model", also="'timm:<name>' for any timm model")
