"""The parse-time config check: the schema's checks and defaults, as Snakemake's validate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import validate as snakemake_validate

from qaclims.core.errors import ConfigError
from qaclims.workflow.preflight import validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())

SMALL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "a": {
            "type": "object",
            "default": {},
            "additionalProperties": False,
            "properties": {
                "b": {"type": "integer", "default": 3},
                "c": {"type": "array", "default": [1, 2], "items": {"type": "integer"}},
            },
        },
        "d": {"type": "string"},
    },
}


def test_defaults_are_filled_recursively_and_never_shared() -> None:
    first: dict[str, Any] = {}
    validate_config(first, SMALL)
    assert first == {"a": {"b": 3, "c": [1, 2]}}  # "a" from its default {}, then its keys
    first["a"]["c"].append(9)  # a later edit of one config leaves the schema's default alone
    second: dict[str, Any] = {"a": {"b": 5}, "d": "x"}
    validate_config(second, SMALL)
    assert second == {"a": {"b": 5, "c": [1, 2]}, "d": "x"}
    assert SMALL["properties"]["a"]["properties"]["c"]["default"] == [1, 2]


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"a": {"b": "x"}}, r"config key a\.b: 'x' is not of type 'integer'"),
        ({"a": {"e": 1}}, r"config key a: .*'e' was unexpected"),
        ({"a": {"c": [1, "y"]}}, r"config key a\.c\.1: 'y' is not of type 'integer'"),
        ({"z": 1}, r"config key \(top level\): .*'z' was unexpected"),
    ],
)
def test_errors_name_the_dotted_key(cfg: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg, SMALL)


def _shipped() -> list[list[Path]]:
    c = ROOT / "config"
    return [
        [c / "config.yaml"],
        [c / "config.yaml", c / "smoke.yaml"],
        [c / "config.yaml", c / "experiments-demo.yaml"],
        [c / "voc12.yaml"],
        [c / "voc12.yaml", c / "ablations-voc12.yaml"],
        [c / "coco14.yaml"],
        *([c / "voc12.yaml", f] for f in sorted((c / "deeplab").glob("*.yaml"))),
    ]


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("files", _shipped(), ids=lambda fs: "+".join(f.name for f in fs))
def test_shipped_configs_come_out_as_snakemakes_validate_makes_them(files: list[Path]) -> None:
    merged: dict[str, Any] = {}
    for f in files:
        merged = _merge(merged, yaml.safe_load(f.read_text()) or {})
    ours, theirs = copy.deepcopy(merged), copy.deepcopy(merged)
    validate_config(ours, SCHEMA)
    snakemake_validate(theirs, str(SCHEMA_FILE), set_default=True)  # the second method
    assert ours == theirs
    assert ours != merged  # defaults were filled in


def test_a_wrong_value_fails_both_ways() -> None:
    cfg = {"make_cam": {"scales": "1.0"}}
    with pytest.raises(ConfigError, match=r"config key make_cam\.scales: '1\.0' is not of type"):
        validate_config(copy.deepcopy(cfg), SCHEMA)
    with pytest.raises(Exception, match="scales"):
        snakemake_validate(copy.deepcopy(cfg), str(SCHEMA_FILE), set_default=True)


def test_the_committed_schema_is_the_one_the_config_classes_generate() -> None:
    """workflow/schemas/config.schema.yaml is what `make schema` writes from the stages'
    typed config classes today: a setting added, removed or re-described in the code and
    not regenerated would otherwise be checked (or refused) by a stale schema."""
    from qaclims.core import schema

    assert SCHEMA_FILE.read_text() == schema.dump(), "stale schema: run `make schema`"
