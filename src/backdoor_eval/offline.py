"""Offline compute jobs: what the workflow fetches first, where it goes, and the switch every other job runs with.

Compute nodes on most clusters cannot reach the internet. The workflow therefore fetches
everything from the network by two local rules on the submitting node, before any compute
job (docs/workflow.md#offline-compute-nodes):

- ``fetch_weights``: the pretrained weights of each model a run uses with ``pretrained: true``
  and no local ``weights:`` file, saved as the backbone's state dict (safetensors) in
  :data:`WEIGHTS_DIR` (:func:`model_weights`);
- ``fetch_dataset``: the archive of each dataset whose reader downloads it (``cifar10`` by
  ``url``, ``imagefolder``/``flowers`` with a ``url``), to the very file the reader reads
  (``<cache_dir>/<file name of the url>``, :func:`archives_to_fetch`).

Every other job runs with :data:`OFFLINE_ENV` set (the shell prefix of
``workflow/rules/common.smk``): the Hugging Face hub offline and this package's own downloads off
(:func:`downloads_off`), so a file that is not there fails at once, naming it, and never waits
on the network. Imports neither torch nor timm: the Snakefile uses it at parse time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from backdoor_eval.configview import ConfigView, thaw, view
from backdoor_eval.network import DOWNLOADS_OFF, OFFLINE_ENV, downloads_off, hub_offline

__all__ = [
    "DOWNLOADS_OFF",
    "OFFLINE_ENV",
    "WEIGHTS_DIR",
    "WeightsFetch",
    "archives_to_fetch",
    "downloads_off",
    "hub_offline",
    "is_url",
    "model_weights",
    "weights_file_name",
    "weights_to_fetch",
]

#: Where ``fetch_weights`` writes pretrained weights (relative to the working directory, shared by every config).
WEIGHTS_DIR = "resources/weights"


def is_url(location: Any) -> bool:
    """Whether ``location`` is an http(s) URL (else a local path)."""
    return urlparse(str(location)).scheme in ("http", "https")


@dataclass(frozen=True)
class WeightsFetch:
    """What ``fetch_weights`` downloads: ``arch``'s hub weights (``source`` ``None``) or the file at ``source``."""

    arch: str
    source: str | None = None


def weights_file_name(arch: str, source: str | None = None) -> str:
    """Where the fetched weights of ``arch`` go: ``<WEIGHTS_DIR>/<arch>.safetensors`` for its hub weights,
    ``<WEIGHTS_DIR>/<arch>/<file stem of the URL>.safetensors`` for a ``weights:`` URL
    (``timm:<name>`` is written ``timm/<name>``)."""
    base = f"{WEIGHTS_DIR}/{arch.replace(':', '/', 1)}"
    if source is None:
        return f"{base}.safetensors"
    stem = PurePosixPath(urlparse(source).path).stem
    if not stem:
        raise ValueError(f"weights URL {source!r} names no file; expected a URL ending in the checkpoint's file name")
    return f"{base}/{stem}.safetensors"


def model_weights(config: ConfigView | Mapping[str, Any], model: str) -> tuple[str | None, WeightsFetch | None]:
    """``(file, fetch)`` for the config's ``model``: the weights file its train jobs read, and what
    fetches it (``None`` for a local ``weights:`` file, read as it is). ``(None, None)`` when
    the model is not pretrained."""
    spec = view(config).model(model)
    if not spec.pretrained:
        return None, None
    arch, weights = spec.arch, spec.weights
    if weights is None:
        return weights_file_name(arch), WeightsFetch(arch)
    if is_url(weights):
        return weights_file_name(arch, str(weights)), WeightsFetch(arch, str(weights))
    return os.path.expanduser(str(weights)), None


def weights_to_fetch(config: ConfigView | Mapping[str, Any], models: Iterable[str]) -> dict[str, WeightsFetch]:
    """The files ``fetch_weights`` writes for ``models`` (those the runs use): path -> what to fetch."""
    config = view(config)
    plan: dict[str, WeightsFetch] = {}
    owners: dict[str, str] = {}
    for model in sorted(set(models)):
        path, fetch = model_weights(config, model)
        if fetch is None:
            continue
        if path in plan and plan[path] != fetch:
            raise ValueError(
                f"models.{owners[path]}.weights ({plan[path].source}) and models.{model}.weights ({fetch.source}) "
                f"would both be fetched into {path}; give the two checkpoints distinct file names"
            )
        plan[path], owners[path] = fetch, model
    return plan


def archives_to_fetch(config: ConfigView | Mapping[str, Any], datasets: Iterable[str]) -> dict[str, str]:
    """The archives ``fetch_dataset`` writes for ``datasets``: dataset -> the file its reader reads
    (datasets with a local ``path`` or none, e.g. ``synthetic``, are left out)."""
    from backdoor_eval.data import remote_archive

    config = view(config)
    plan: dict[str, str] = {}
    sources: dict[str, tuple[str, str, str | None]] = {}  # path -> (dataset, url, md5)
    for name in sorted(set(datasets)):
        spec = config.datasets[name]
        archive = remote_archive(spec.kind, thaw(spec.params))
        if archive is None:
            continue
        path = archive.path.as_posix()
        first, url, md5 = sources.setdefault(path, (name, archive.url, archive.md5))
        if (url, md5) != (archive.url, archive.md5):
            raise ValueError(
                f"datasets {first} and {name} download different archives ({url}, {archive.url}) "
                f"into the same file {path}; give one of them another cache_dir"
            )
        plan[name] = path
    return plan
