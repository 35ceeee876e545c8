"""The dataset registry ``DATASETS`` and its factory ``create_dataset``.

Each dataset is a class registered under its name (one module per dataset
in ``backdoor_eval.data.readers``) with ``__init__(**params)``, a ``params``
dict (every parameter, defaults filled in) and
``load(progress: bool) -> RawDataset``.
"""

from __future__ import annotations

import inspect
from typing import Any

from backdoor_eval.registry import Registry

DATASETS: Registry[type] = Registry("dataset")


def create_dataset(name: str, params: dict[str, Any] | None = None) -> Any:
    """Build the registered dataset ``name`` from ``params``, naming any unknown parameter."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS.names())}")
    params = dict(params or {})
    cls = DATASETS.get(name)
    allowed = _init_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for dataset {name!r}; allowed: {', '.join(allowed)}"
        )
    return cls(**params)


def registered_name(cls: type) -> str:
    """The name ``cls`` is registered under (its class name if it is not registered)."""
    return next((n for n in DATASETS.names() if DATASETS.get(n) is cls), cls.__name__)


def _init_params(cls: type) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


__all__ = ["DATASETS", "create_dataset", "registered_name"]
