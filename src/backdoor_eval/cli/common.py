"""Argument helpers shared by the CLI areas."""

from __future__ import annotations

import json


def json_object(text: str | None, option: str) -> dict:
    """``text`` as a JSON object (empty or None: ``{}``), or a ``ValueError`` naming the option and the text."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} {text!r} is not valid JSON ({exc.msg}); expected a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError(f"{option} {text!r} is not a JSON object; expected e.g. '{{\"size\": 224}}'")
    return value
