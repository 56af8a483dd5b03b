"""The demo against the paper config: each setting of ``config/config.yaml`` that computes
something other than ``config/voc12.yaml``, with the reason the demo file gives for it.

Both files are resolved as a job sees them (schema defaults plus the file:
:func:`qaclims.report.gpu_hours.load_config`) and compared leaf by leaf: a
leaf is a key whose schema has no ``properties`` (so ``corpus.synonyms``, a free-form map
of class names, is one value). Every differing leaf must be explained by a comment of
the demo file: the comment on its own line, or, for a leaf the line does not comment (or
the file does not set), the comment on the line of its nearest ancestor that has one
(``train_cam.model:  # a tiny ResNet from scratch`` explains every leaf below it). A
comment continues over the following comment-only lines whose ``#`` is in the same column.

Two kinds of leaves need no comment (:func:`is_operational`): how a run is carried out
(workers, threads, GPUs per job, shards, inference batch sizes, log and save intervals,
the report's size) and which data it reads (``run``, ``dataset``, ``synthetic``). They
are listed after the table by name.

:func:`block` makes the Markdown between :data:`BEGIN` and :data:`END` of
``docs/REPRODUCING.md`` (``python -m qaclims.report.readme --demo-settings --write
docs/REPRODUCING.md``); :func:`compare` gives its rows and the unexplained leaves, which
the tests require to be none.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qaclims.core.errors import DataError
from qaclims.report.gpu_hours import SCHEMA, load_config

BEGIN, END = "<!-- demo-settings:begin -->", "<!-- demo-settings:end -->"

Path_ = tuple[str, ...]

#: last key names of leaves that change how a run is carried out, not what it computes
OPERATIONAL_NAMES = frozenset({"num_workers", "log_every", "resume_every", "io_workers"})
#: top-level sections and whole keys of that kind: the data read, the machine's share
OPERATIONAL_SECTIONS = frozenset({"run", "dataset", "synthetic", "shards", "threads", "gpus",
                                  "device", "report"})  # fmt: skip
#: inference batch sizes (a batched result equals the one-by-one result)
OPERATIONAL_KEYS = frozenset({("make_cam", "batch_size"), ("vqa", "batch_size")})


def is_operational(path: Path_) -> bool:
    """Whether the leaf at ``path`` only says how or on what a run is carried out."""
    return (
        path[0] in OPERATIONAL_SECTIONS or path[-1] in OPERATIONAL_NAMES or path in OPERATIONAL_KEYS
    )


@dataclass(frozen=True)
class Row:
    """One explained group of differing leaves.

    key: the commented key (a leaf, or the ancestor whose comment explains the leaves).
    demo, paper: ``sub.key: value`` of each leaf below ``key`` (just the value when the
        leaf is ``key`` itself), as the demo and the paper config resolve it.
    why: the demo file's comment, continuation lines joined.
    """

    key: Path_
    demo: list[str] = field(default_factory=list)
    paper: list[str] = field(default_factory=list)
    why: str = ""


def leaves(cfg: Mapping[str, Any], schema: Mapping[str, Any], at: Path_ = ()) -> Iterator[Path_]:
    """Every leaf path of ``cfg``: a key whose schema node has no ``properties``."""
    for key, value in cfg.items():
        node = schema.get("properties", {}).get(key, {})
        if isinstance(value, Mapping) and "properties" in node:
            yield from leaves(value, node, (*at, key))
        else:
            yield (*at, key)


def lookup(cfg: Mapping[str, Any], path: Path_) -> Any:
    """The value at ``path``, or the string ``"(not set)"``."""
    node: Any = cfg
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return "(not set)"
        node = node[key]
    return node


def _comment_start(line: str) -> int:
    """Column of the ``#`` that starts the line's comment, -1 without one (a ``#`` inside
    quotes or not after a blank is part of the value, as YAML reads it)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return i
    return -1


def comments(text: str) -> dict[int, str]:
    """0-based line number -> the comment of a line that holds a key and a comment, with
    the comment-only lines right below whose ``#`` is in the same column appended."""
    lines = text.splitlines()
    out: dict[int, str] = {}
    i = 0
    while i < len(lines):
        col = _comment_start(lines[i])
        if col <= 0 or not lines[i][:col].strip():
            i += 1
            continue
        parts = [lines[i][col + 1 :].strip()]
        j = i + 1
        while j < len(lines) and _comment_start(lines[j]) == col and not lines[j][:col].strip():
            parts.append(lines[j][col + 1 :].strip())
            j += 1
        out[i] = " ".join(p for p in parts if p)
        i = j
    return out


def key_lines(text: str) -> dict[Path_, int]:
    """Key path -> 0-based line of the key, for every mapping key of the YAML text."""
    out: dict[Path_, int] = {}

    def walk(node: yaml.Node, at: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = (*at, str(k.value))
                out[path] = k.start_mark.line
                walk(v, path)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return (
        yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
    )


def compare(
    demo_path: Path, paper_path: Path, schema: Mapping[str, Any] | None = None
) -> tuple[list[Row], list[Path_], list[Path_]]:
    """The demo's differing leaves against the paper config, both resolved with the
    defaults of ``schema`` (default: the checkout's schema).

    Returns (rows: explained groups in the order of their keys in the demo file; the
    operational leaves that differ; the unexplained leaves, which should be none).
    """
    if schema is None:
        schema = yaml.safe_load(SCHEMA.read_text())
    demo, paper = load_config([demo_path], schema), load_config([paper_path], schema)
    text = demo_path.read_text()
    notes, lines = comments(text), key_lines(text)
    paths = list(dict.fromkeys([*leaves(demo, schema), *leaves(paper, schema)]))
    groups: dict[Path_, Row] = {}
    operational: list[Path_] = []
    unexplained: list[Path_] = []
    for path in paths:
        if lookup(demo, path) == lookup(paper, path):
            continue
        if is_operational(path):
            operational.append(path)
            continue
        source = next(
            (path[:n] for n in range(len(path), 0, -1) if lines.get(path[:n], -1) in notes),
            None,
        )
        if source is None:
            unexplained.append(path)
            continue
        while len(source) > 1 and lines.get(source[:-1]) == lines[source]:
            source = source[:-1]  # a flow mapping's line: its key names the group
        row = groups.setdefault(source, Row(source, why=notes[lines[source]]))
        sub = ".".join(path[len(source) :])
        for side, cfg in ((row.demo, demo), (row.paper, paper)):
            value = _fmt(lookup(cfg, path))
            side.append(f"{sub}: {value}" if sub else value)
    order = sorted(groups, key=lambda p: lines[p])
    return [groups[p] for p in order], operational, unexplained


def _cell(items: list[str]) -> str:
    return "<br>".join(f"`{i}`" for i in items).replace("|", "\\|")


def block(demo_path: Path, paper_path: Path, schema: Mapping[str, Any] | None = None) -> str:
    """The Markdown table of :func:`compare`; DataError naming any unexplained leaf."""
    rows, operational, unexplained = compare(demo_path, paper_path, schema)
    if unexplained:
        keys = ", ".join(".".join(p) for p in unexplained)
        raise DataError(
            f"{demo_path}: no comment says why the demo differs from {paper_path} in: {keys}"
        )
    head = f"| key | demo (`{demo_path.name}`) | paper (`{paper_path.name}`) | why (its comment) |"
    out = [BEGIN, head, "|:--|:--|:--|:--|"]
    for r in rows:
        why = r.why.replace("|", "\\|")
        out.append(f"| `{'.'.join(r.key)}` | {_cell(r.demo)} | {_cell(r.paper)} | {why} |")
    names = ", ".join(f"`{'.'.join(p)}`" for p in operational)
    out += ["", f"Also different, and only how or on what the run is carried out: {names}.", END]
    return "\n".join(out)
