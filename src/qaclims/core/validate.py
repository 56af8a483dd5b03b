"""The workflow config against its JSON schema, defaults filled in.

:func:`validate_config` does what Snakemake's ``validate(..., set_default=True)`` does, on a
schema the caller has already loaded (the Snakefile loads it once with the C YAML loader).
Shared by the parse-time checks (:mod:`qaclims.workflow.preflight`) and the reports that
resolve a shipped config themselves (:mod:`qaclims.report.gpu_hours`). Standard library only
at import time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from qaclims.core.errors import ConfigError


def validate_config(config: dict[str, Any], schema: Mapping[str, Any]) -> None:
    """Check ``config`` against the JSON ``schema`` (draft 2020-12) and fill in, in place, every
    default of a property the config leaves out (objects recursively, a fresh copy of each
    default). The best-matching error raises :class:`ConfigError` naming the dotted key."""
    import jsonschema
    from jsonschema import validators

    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def set_defaults(
        validator: Any, properties: Mapping[str, Any], instance: Any, sub: Any
    ) -> Iterable[Any]:
        if isinstance(instance, dict):
            for key, prop in properties.items():
                if "default" in prop and key not in instance:
                    instance[key] = copy.deepcopy(prop["default"])
        yield from check_properties(validator, properties, instance, sub)

    filling = validators.extend(base, {"properties": set_defaults})
    err = jsonschema.exceptions.best_match(filling(schema).iter_errors(config))
    if err is not None:
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")
