"""Whether this process may use the network: the switch every workflow job but the fetch rules runs with.

The workflow exports :data:`OFFLINE_ENV` for its jobs (``backdoor_eval.offline``,
docs/workflow.md#offline-compute-nodes): the Hugging Face hub offline and
this package's own downloads off. Imports nothing, so the data readers and
the model weights can ask it without importing the workflow's planning.
"""

from __future__ import annotations

import os

#: Set (to 1) for every workflow job but the fetch rules: this package downloads nothing then.
DOWNLOADS_OFF = "BACKDOOR_EVAL_OFFLINE"

#: The environment of every workflow job but the fetch rules: the hub offline, downloads off.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", DOWNLOADS_OFF: "1"}

_TRUE = {"1", "true", "yes", "on"}


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def downloads_off() -> bool:
    """Whether this package must not download anything (:data:`DOWNLOADS_OFF` set)."""
    return _flag(DOWNLOADS_OFF)


def hub_offline() -> str | None:
    """The variable that keeps pretrained weights off the network, if one is set: ``HF_HUB_OFFLINE``
    (also ``TRANSFORMERS_OFFLINE``) or :data:`DOWNLOADS_OFF`; else ``None``."""
    return next((name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", DOWNLOADS_OFF) if _flag(name)), None)
