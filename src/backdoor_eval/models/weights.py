"""Pretrained weights: local files, URLs, the hub; fast and clear when offline (docs/decisions.md#models).

- :func:`read_weights`: a state dict from a local file or an http(s) URL (downloaded once into
  the torch-hub cache, ``<torch.hub.get_dir()>/checkpoints/<file name>``, where timm keeps it too);
- :func:`load_backbone_weights`: load it strictly into a backbone, leaving the classifier new;
- :func:`save_backbone_weights`: a backbone's state dict, classifier left out, as a safetensors file
  (what the workflow's ``fetch_weights`` rule writes, ``backdoor_eval.offline``);
- :func:`hub_weights_file`: a local copy of a timm model's default weights, from the Hugging Face or
  torch-hub cache when one is there, else downloaded into it (``huggingface_hub.hf_hub_download``,
  ``torch.hub.download_url_to_file``);
- :func:`timm_from_hub`: a timm model with those weights, loaded by ``timm.create_model(pretrained=True)``.

Offline is a fast :class:`WeightsUnavailableError`, never a hang: with ``HF_HUB_OFFLINE`` (or
``BACKDOOR_EVAL_OFFLINE``, set for every workflow job but the fetch rules) set and no cached copy,
or when the weights host accepts no TCP connection within ``PROBE_TIMEOUT_S``.
Only public timm, torch.hub, huggingface_hub and safetensors functions are used.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn as nn

from backdoor_eval.io import atomic_path
from backdoor_eval.offline import WEIGHTS_DIR, hub_offline, is_url

try:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError
except ImportError:  # timm then knows the weights by their URLs only
    hf_hub_download = try_to_load_from_cache = None
    EntryNotFoundError = LookupError

__all__ = [
    "PROBE_TIMEOUT_S",
    "WeightsUnavailableError",
    "check_weights_file",
    "hub_weights_file",
    "load_backbone_weights",
    "read_weights",
    "save_backbone_weights",
    "timm_from_hub",
]

_logger = logging.getLogger(__name__)

#: Seconds to wait for a TCP connection before declaring the weights host unreachable.
PROBE_TIMEOUT_S = float(os.environ.get("BACKDOOR_EVAL_PROBE_TIMEOUT", "3"))


class WeightsUnavailableError(ValueError):
    """Pretrained weights were asked for but cannot be had (offline, unreachable host, missing file)."""


def _has_hf_hub() -> bool:
    """Whether huggingface_hub, timm's source of most pretrained weights, is installed."""
    return try_to_load_from_cache is not None


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


def _unavailable(model_name: str, why: str, fix: str | None = None) -> WeightsUnavailableError:
    """The error for weights that cannot be had; ``model_name`` comes quoted (see timm_classifier)."""
    fix = fix or "Set weights: to a local file of the weights (or use pretrained: false)"
    return WeightsUnavailableError(f"pretrained weights for model {model_name} cannot be loaded: {why}. {fix}")


def _url_cache_path(url: str) -> str:
    """Where timm (and torch.hub) cache a downloaded checkpoint: <torch hub dir>/checkpoints/<file name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _download_to_cache(url: str, cached: str) -> str:
    """Download ``url`` to ``cached`` as timm does: torch.hub's downloader, checking the SHA-256 prefix
    that a file name ``<name>-<hex>.<ext>`` carries (as ``torch.hub.load_state_dict_from_url`` does)."""
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    _logger.info('Downloading: "%s" to %s', url, cached)
    match = torch.hub.HASH_REGEX.search(os.path.basename(cached))
    torch.hub.download_url_to_file(url, cached, hash_prefix=match.group(1) if match else None, progress=False)
    return cached


def _download(url: str, model_name: str) -> str:
    """Path of ``url`` in timm's cache, downloading it first when it is not there."""
    cached = _url_cache_path(url)
    if os.path.isfile(cached):
        return cached
    if offline := hub_offline():
        raise _unavailable(model_name, f"{url} is not cached and {offline} is set")
    if not _host_reachable(url):
        raise _unavailable(model_name, f"{urlparse(url).hostname} is unreachable within {PROBE_TIMEOUT_S:g} s")
    try:
        return _download_to_cache(url, cached)
    except Exception as error:  # network and HTTP errors come in many types
        raise _unavailable(model_name, f"download of {url} failed ({type(error).__name__}: {error})") from error


def check_weights_file(weights: str | os.PathLike, model_name: str) -> None:
    """A local ``weights`` file must exist: else :class:`WeightsUnavailableError` at once, naming it
    (and, for a file of the workflow's weights folder, the rule that writes it). URLs pass."""
    location = str(weights)
    if is_url(location) or os.path.isfile(os.path.expanduser(location)):
        return
    fix = None
    if os.path.normpath(location).startswith(os.path.normpath(WEIGHTS_DIR) + os.sep):
        fix = (
            "The workflow's fetch_weights rule writes it on the submitting node before any train job; "
            "on a machine with no internet, make it with `backdoor-eval fetch-weights` elsewhere and copy it there "
            "(docs/models.md#pretrained-weights-and-offline-machines)"
        )
    raise _unavailable(model_name, f"weights file {location!r} does not exist", fix)


def read_weights(weights: str | os.PathLike, model_name: str) -> dict[str, torch.Tensor]:
    """State dict from a local file or URL; unwraps ``state_dict``/``model`` entries and ``backbone.``."""
    location = str(weights)
    check_weights_file(location, model_name)
    path = _download(location, model_name) if is_url(location) else os.path.expanduser(location)
    import timm  # here, not at the top: only pretrained models read weights (small_cnn jobs never import timm)

    try:
        state_dict = timm.models.load_state_dict(path)
    except Exception as error:
        raise _unavailable(model_name, f"{location!r} is not a readable state dict ({error})") from error
    if state_dict and all(k.startswith("backbone.") for k in state_dict):
        # a saved Classifier: its backbone's own state dict
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items()}
    return state_dict


def _classifier_prefixes(backbone: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the backbone's classifier (``fc.``, ``last_linear.``, ...)."""
    classifier = backbone.get_classifier()
    return tuple(f"{n}." for n, m in backbone.named_modules() if m is classifier and n)


def load_backbone_weights(backbone: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, model_name: str):
    """Load every backbone tensor from ``state_dict`` (strictly); the classifier stays freshly initialised."""
    classifier_prefixes = _classifier_prefixes(backbone)
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


def save_backbone_weights(backbone: nn.Module, out: str | os.PathLike, **metadata: str) -> int:
    """Write the backbone's state dict without its classifier to ``out`` (safetensors, atomically);
    ``metadata`` (strings) goes into the file's header. Returns the number of tensors written."""
    from safetensors.torch import save_file

    if not str(out).endswith(".safetensors"):
        raise ValueError(f"weights file {out} must end in .safetensors (it is read by its extension)")
    prefixes = _classifier_prefixes(backbone)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items() if not k.startswith(prefixes)}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    return len(state)


def _cached_hub_file(pretrained_cfg: Any) -> str | None:
    """A local copy of the model's default weights, if the HF or torch-hub cache holds one."""
    hf_hub_id = getattr(pretrained_cfg, "hf_hub_id", None)
    if hf_hub_id and _has_hf_hub():
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


def _hf_names(pretrained_cfg: Any) -> list[str]:
    """The files a timm Hugging Face repo may hold the weights in, in timm's order of preference."""
    if pretrained_cfg.hf_hub_filename:
        return [pretrained_cfg.hf_hub_filename]
    return ["model.safetensors", "pytorch_model.bin"]


def _hf_download(hf_hub_id: str, names: list[str]) -> str:
    """Download the first of ``names`` that the repo has into the Hugging Face cache."""
    repo_id, _, revision = hf_hub_id.partition("@")
    for name in names[:-1]:
        try:
            return hf_hub_download(repo_id, name, revision=revision or None)
        except EntryNotFoundError:
            continue
    return hf_hub_download(repo_id, names[-1], revision=revision or None)


def hub_weights_file(timm_name: str, label: str) -> str:
    """A local file of the timm model's default pretrained weights: the copy in the Hugging Face or
    torch-hub cache, else downloaded into it. Fails fast (:class:`WeightsUnavailableError`) offline."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(timm_name)
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise _unavailable(label, "timm knows no pretrained weights for it")
    cached = _cached_hub_file(pretrained_cfg)
    if cached is not None:
        return cached
    if pretrained_cfg.hf_hub_id and _has_hf_hub():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        where = f"Hugging Face hub repo {pretrained_cfg.hf_hub_id}"
    else:
        endpoint = pretrained_cfg.url
        where = pretrained_cfg.url
    if offline := hub_offline():
        raise _unavailable(label, f"{where} is not cached and {offline} is set")
    if not _host_reachable(endpoint):
        raise _unavailable(
            label,
            f"{where} is unreachable ({urlparse(endpoint).hostname} accepted "
            f"no connection within {PROBE_TIMEOUT_S:g} s)",
        )
    try:
        if pretrained_cfg.hf_hub_id and _has_hf_hub():
            return _hf_download(pretrained_cfg.hf_hub_id, _hf_names(pretrained_cfg))
        return _download_to_cache(pretrained_cfg.url, _url_cache_path(pretrained_cfg.url))
    except Exception as error:  # hub, HTTP and file errors come in many types
        raise _unavailable(label, f"download from {where} failed ({type(error).__name__}: {error})") from error


def timm_from_hub(timm_name: str, kwargs: Mapping[str, Any], label: str) -> nn.Module:
    """timm model with its default pretrained weights (with the pretraining head), failing fast offline."""
    import timm

    path = hub_weights_file(timm_name, label)
    pretrained_cfg = timm.models.get_pretrained_cfg(timm_name)
    # created with the pretraining classes so that timm loads strictly (head included), through the
    # model's own checkpoint filter (e.g. the Cadene NASNet-A Mobile key names and background class)
    return timm.create_model(
        timm_name,
        pretrained=True,
        num_classes=pretrained_cfg.num_classes,
        pretrained_cfg_overlay=dict(file=path),
        **kwargs,
    )
