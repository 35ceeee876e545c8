"""Models behind a registry (docs/decisions.md#models): ResNet-50, NASNet-A Large, NASNet-A Mobile and small CPU models.

Every model is a :class:`Classifier`: a backbone with timm's interface
(``forward_features``, ``forward_head(pre_logits=True)``, ``get_classifier()``)
seen through one contract: ``forward(x) -> logits`` (f_L(x) of section 2.3),
``forward_hidden(x) -> (h, logits)`` with ``h`` the final hidden representation the
regularizers of section 2.3 (eqs. 1-6) act on, ``head`` (g with ``head(h) == logits``),
``num_features`` and ``default_cfg``.

One concern per module, as in timm:

- ``classifier``: the :class:`Classifier` contract and its input-size handling;
- ``registry``: the ``MODELS`` registry; ``factory``: :func:`create_model`, and :func:`fetch_weights`
  (a model's pretrained backbone as a local file: the workflow's ``fetch_weights`` rule);
- ``weights``: pretrained weights (local file, URL, hub, offline detection,
  :class:`WeightsUnavailableError`), through public timm/torch.hub/huggingface_hub APIs only;
- ``timm_models``: ``resnet50``, ``resnet18``, ``nasnet_large``, ``nasnet_mobile`` and
  ``timm:<any timm name>``;
- ``nasnet_mobile``: :class:`NASNetAMobile` from timm's NASNet cells, registered with timm as
  ``nasnetamobile``, and :func:`convert_cadene_nasnet_mobile_state_dict` for the public Cadene
  ImageNet checkpoint (1001 classes, background at index 0);
- ``small_cnn``: :class:`SmallCNN` (torch only);
- ``files``: a trained model's file, :func:`save_model` and :func:`load_model`.

timm (with torchvision, ~2 s of start-up on a CPU) is imported only when a timm model is built:
the builders import it inside, and ``nasnet_mobile`` (which needs it at import) is imported on
first use of its names here (module ``__getattr__``) or by its builder. A small-CNN job and the
workflow's registry check never load it.

Adding a model is one decorated function in an architecture module (imported below)::

    @MODELS.register("my_model")
    def my_model(num_classes, pretrained=False, weights=None, **kwargs) -> Classifier:
        return timm_classifier("some_timm_name", num_classes, pretrained, weights, **kwargs)

Any timm architecture is also reachable as ``create_model("timm:<name>", ...)``.
"""

from __future__ import annotations

from .classifier import Classifier
from .factory import create_model, fetch_weights
from .files import load_model, save_model
from .registry import MODELS

# the architecture modules: importing them registers their builders in MODELS
# (timm_models is also imported by factory above)
from .small_cnn import SmallCNN
from .timm_models import timm_classifier
from .weights import PROBE_TIMEOUT_S, WeightsUnavailableError

# names of the timm-dependent nasnet_mobile module, imported on first use (PEP 562)
_NASNET_MOBILE_NAMES = ("CADENE_NASNET_MOBILE_URL", "NASNetAMobile", "convert_cadene_nasnet_mobile_state_dict")

__all__ = [
    "MODELS",
    "Classifier",
    "WeightsUnavailableError",
    "create_model",
    "fetch_weights",
    "load_model",
    "save_model",
    "timm_classifier",
    "SmallCNN",
    "NASNetAMobile",
    "convert_cadene_nasnet_mobile_state_dict",
    "CADENE_NASNET_MOBILE_URL",
    "PROBE_TIMEOUT_S",
]


def __getattr__(name: str):
    if name in _NASNET_MOBILE_NAMES:
        from . import nasnet_mobile

        return getattr(nasnet_mobile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
