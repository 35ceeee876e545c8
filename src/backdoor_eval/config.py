"""The one config loader, used by the Snakefile and the CLI alike.

A config goes through three steps, each failing with a message that names
the bad key and what is allowed:

1. :func:`read_config`: YAML from a file (a syntax error names the file and
   line);
2. the JSON schema shipped with the package (``backdoor_eval.schema``):
   types and ranges, with the schema's ``default:`` values filled in;
3. :func:`backdoor_eval.validation.validate`: what a schema cannot say
   (names used by experiments declared, classes of the dataset, ranges of
   alpha and poison rates) and, by default, the registry names.

:func:`prepare_config` runs steps 2 and 3 on a mapping in place (the
Snakefile's ``config``); :func:`load_config` runs all three on a file.
Workflow defaults live in the schema; a trigger's alpha, a regularizer's
weight and the training settings have theirs beside their code.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any

from backdoor_eval import configview, validation
from backdoor_eval.schema import validate_schema


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML config file into a mapping; errors name the file and line."""
    import yaml

    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(
            f"config file {os.fspath(path)!r} is not a regular file (a folder or a device); allowed: a YAML file"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            config = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{os.fspath(path)}, line {mark.line + 1}, column {mark.column + 1}" if mark else os.fspath(path)
            problem = getattr(exc, "problem", None) or str(exc)
            raise ValueError(f"config {where}: YAML syntax error: {problem}") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"config {os.fspath(path)!r} is not a mapping of keys; allowed: a YAML mapping (name: ..., datasets: ...)"
        )
    return config


def load_config(path: str | os.PathLike, check_registries: bool = True) -> dict[str, Any]:
    """Read, check and complete the config in ``path`` (see the module docstring)."""
    return prepare_config(read_config(path), check_registries=check_registries)


def prepare_config(config: MutableMapping[str, Any], check_registries: bool = True) -> MutableMapping[str, Any]:
    """Validate ``config`` against the schema, fill in its defaults and run the semantic checks, in place.

    Returns ``config``. Raises ``ValueError`` naming the first bad key.
    """
    from backdoor_eval import pretrain

    # The default outputs name every paper experiment and make the ones the
    # config has; outputs the user wrote must name experiments that exist.
    explicit_outputs = config.get("outputs") is not None
    from backdoor_eval.analyses import plan as analyses

    validation.check_trigger_entry_keys(config)  # a moved key's new place, before the schema's "unknown key"
    validate_schema(config)
    validation.validate(config, check_registries=check_registries)
    pretrain.validate(config, check_registries=check_registries)
    analyses.validate(config)
    if explicit_outputs:
        validation.check_output_experiments(config)
    else:
        # Only the defaults this config makes, so that the completed config
        # (`backdoor-eval show-config`) loads again: written, they must exist.
        made = configview.outputs(config)
        config["outputs"] = {output: value for output, value in config["outputs"].items() if output in made}
    return config
