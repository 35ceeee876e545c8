"""The config's JSON schema, shipped with the package: loading it, its defaults, and one-line errors.

``schemas/config.schema.yaml`` (linked as ``workflow/schemas/config.schema.yaml``)
is the config's reference documentation. :func:`validate_schema` checks a
config against it and fills in its ``default:`` values; a violation is one
line naming the key, the bad value and what is allowed
(:func:`describe_schema_error`). :func:`schema_default` reads one default.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping, MutableMapping
from importlib import resources
from typing import Any

SCHEMA_RESOURCE = "schemas/config.schema.yaml"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The config's JSON schema (a fresh copy is not needed: callers must not mutate it)."""
    import yaml

    return yaml.safe_load(resources.files("backdoor_eval").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8"))


def schema_default(*path: str) -> Any:
    """The ``default:`` of the schema node at ``path`` (property names, ``$defs`` entries resolved).

    ``schema_default("outputs")`` is the outputs mapping; ``schema_default("experiment", "seed")``
    the default seed of an experiment.
    """
    schema = load_schema()
    node: Mapping[str, Any] = schema
    for i, key in enumerate(path):
        if i == 0 and key in schema.get("$defs", {}) and key not in schema["properties"]:
            node = schema["$defs"][key]
        else:
            node = node["properties"][key]
    if "default" not in node:
        raise KeyError(f"the config schema has no default for {'.'.join(path)}")
    return copy.deepcopy(node["default"])


def validate_schema(config: MutableMapping[str, Any]) -> None:
    """Check ``config`` against the schema and fill in its defaults (in place)."""
    validator = _defaults_filling_validator()(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda error: _path_order(error.absolute_path))
    if errors:
        raise ValueError(describe_schema_error(_most_specific(errors[0])))


def describe_schema_error(error: Any) -> str:
    """One line: the config key, the bad value and what is allowed, without the schema dump."""
    key = _key_path(error.absolute_path) or "(top level)"
    value = error.instance
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{_join(key, missing) if key != '(top level)' else missing}: required key is missing"
    if error.validator == "additionalProperties":
        allowed = sorted((error.schema.get("properties") or {}).keys())
        extra = sorted(set(value) - set(allowed), key=str) if isinstance(value, Mapping) else []
        name = extra[0] if extra else "?"
        return f"{_join(key, name)}: unknown key; allowed: {', '.join(allowed) or '(none)'}"
    if error.validator == "minItems" and isinstance(value, list) and not value:
        return f"{key}: is an empty list; give at least one value"
    if error.validator == "minProperties" and isinstance(value, Mapping) and not value:
        return f"{key}: is empty; give at least one entry"
    hint = ""
    if isinstance(value, str) and _looks_numeric(value):
        hint = f" (YAML reads {value!r} as text: write it with a decimal point, e.g. {_decimal(value)})"
    allowed = _allowed(error)
    return f"{key}: {value!r} is not valid; {allowed}{hint}"


def _most_specific(error: Any) -> Any:
    """Descend into oneOf/anyOf alternatives to the error that explains the value best."""
    while error.context:
        deeper = [e for e in error.context if e.validator not in ("oneOf", "anyOf", "type", "const", "enum")]
        if not deeper:
            break
        error = max(deeper, key=lambda e: len(e.absolute_path))
    return error


def _allowed(error: Any) -> str:
    schema = error.schema
    if error.validator == "enum":
        return "allowed: " + ", ".join(map(str, schema["enum"]))
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return error.message.split(" is ", 1)[-1]
    if error.validator == "pattern":
        return "allowed: letters, digits, _ . + - (starting with a letter, digit or _)"
    if error.validator == "type":
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return "allowed: " + " or ".join("null" if kind == "null" else kind for kind in kinds)
    if error.validator in ("oneOf", "anyOf"):
        described = error.schema.get("description")
        return f"allowed: {described}" if described else "allowed: see the schema's description of this key"
    return error.message


def _path_order(path: Iterator[Any]) -> list[tuple[int, int, str]]:
    """Sort key of an error's path: list indices in order, keys by text (YAML keys may be 1, null, true)."""
    return [(0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in path]


def _key_path(path: Iterator[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key and key != "(top level)" else name


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decimal(text: str) -> str:
    mantissa, _, exponent = text.lower().partition("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}" if exponent else text


@functools.cache
def _defaults_filling_validator():
    """The schema's validator class, extended to fill ``default:`` values of absent properties.

    Defaults are filled only into mappings (``table1: null`` stays null) and
    before descending, so a filled-in mapping gets its own nested defaults.
    """
    import jsonschema

    base = jsonschema.validators.validator_for(load_schema())
    check_properties = base.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if name not in instance and isinstance(subschema, Mapping) and "default" in subschema:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from check_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": fill_then_check})
