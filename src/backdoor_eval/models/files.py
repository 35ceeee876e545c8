"""A trained model's file (``model.pt``): written by the train and retrain jobs, read by retraining
and by the analyses of a trained model.

The file is a ``torch.save`` of tensors and plain data only (the model's registry name, its builder
parameters, the number of classes and the kept state dict), so reading it never runs code:
:func:`load_model` refuses anything else, naming the file and how to rebuild it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

REBUILD = "rebuild it by rerunning its train job"


def save_model(
    path: str | os.PathLike,
    model_name: str,
    model_params: Mapping[str, Any],
    num_classes: int,
    state_dict: Mapping[str, Any],
) -> None:
    """Write the model file atomically: ``model_name`` (its ``MODELS`` name), ``model_params`` (its builder's
    parameters besides ``pretrained`` and ``weights``), ``num_classes`` and the weights, ``state_dict``."""
    import torch

    from backdoor_eval.io import atomic_path

    document = {"model": model_name, "model_params": model_params, "num_classes": num_classes, "state_dict": state_dict}
    with atomic_path(path) as tmp:
        torch.save(document, tmp)


def load_model(
    path: str | os.PathLike,
    model_name: str,
    num_classes: int,
    model_params: Mapping[str, Any],
    label: str = "--init-model",
):
    """The model in the file at ``path``, rebuilt as ``model_name`` with ``num_classes`` outputs and
    ``model_params`` (no pretrained weights: the file holds them all), on the CPU. A ``ValueError`` names
    the file (as ``label``, the option that gave it) when it is not a model file this workflow wrote, holds
    another model, or holds weights that do not fit."""
    import torch

    from backdoor_eval.models.factory import create_model

    try:
        # Tensors and plain data only: a model file never runs code (no arbitrary pickles).
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling refusal, a truncated or foreign file
        raise ValueError(f"{label} {path} is not a model file this workflow wrote ({exc}); {REBUILD}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        what = type(saved).__name__ if not isinstance(saved, dict) else "a mapping without a state_dict"
        raise ValueError(f"{label} {path} holds {what}, not a model file this workflow wrote; {REBUILD}")
    if saved.get("model") != model_name:
        raise ValueError(f"{label} {path} holds a {saved.get('model')!r} model, not {model_name!r}")
    model = create_model(model_name, num_classes=num_classes, pretrained=False, **model_params)
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # missing, unexpected or misshapen tensors
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"{label} {path} holds weights that do not fit model {model_name!r} ({first}); {REBUILD}"
        ) from None
    return model
