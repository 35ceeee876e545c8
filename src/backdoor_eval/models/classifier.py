"""The Classifier contract every model meets, and its input-size handling (docs/decisions.md#models).

A :class:`Classifier` wraps a backbone with timm's interface (``forward_features``,
``forward_head(pre_logits=True)``, ``get_classifier()``) and exposes:

- ``forward(x) -> logits`` (f_L(x) of section 2.3),
- ``forward_hidden(x) -> (h, logits)`` with ``h`` the final hidden
  representation (pooled penultimate features, the input of the last linear
  layer) that the regularizers of section 2.3 (eqs. 1-6) act on,
- ``head``: the module g with ``head(h) == logits``,
- ``num_features`` (width of ``h``) and ``default_cfg`` (``mean``, ``std``,
  ``input_size``, ``min_input_size``).

Inputs smaller than ``min_input_size`` are upsampled inside ``forward`` (:meth:`Classifier.fit_input`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Classifier", "as_input_size"]


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
        model_params: Mapping[str, Any] | None = None,
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
        cfg["min_input_size"] = None if min_size is None else as_input_size(min_size)
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
    def min_input_size(self) -> tuple[int, int, int] | None:
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


def as_input_size(size: Any) -> tuple[int, int, int]:
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
