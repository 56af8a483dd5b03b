"""The demo against the paper config (docs/REPRODUCING.md): every setting of the demo that
computes something other than config/voc12.yaml is explained by a comment of
config/config.yaml, and the document's table is the one the two files make."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qaclims.core.errors import DataError
from qaclims.report import demo_settings as ds
from qaclims.report import gpu_hours, readme
from tests.workflow_util import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEMO = ROOT / "config" / "config.yaml"
PAPER = ROOT / "config" / "voc12.yaml"

TEXT = """\
a: 1            # one
                # two
  # not a continuation: another column
b:              # the b block
  c: 2
  d: "x # y"
  e: 'it''s' # q
#  a comment-only line
f: {g: 1, h: [1, 2]}   # flow
i: 3 #no blank before? still a comment
j: a#b
"""


def test_comments_by_hand() -> None:
    assert ds.comments(TEXT) == {
        0: "one two",
        3: "the b block",
        6: "q",
        8: "flow",
        9: "no blank before? still a comment",
    }


def test_key_lines_by_hand() -> None:
    lines = ds.key_lines(TEXT)
    assert lines[("a",)] == 0 and lines[("b",)] == 3 and lines[("b", "e")] == 6
    assert lines[("f", "g")] == lines[("f", "h")] == 8 and lines[("j",)] == 10


TINY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "run": {"type": "string", "default": "x"},
        "lr": {"type": "number", "default": 0.1},
        "net": {
            "type": "object",
            "default": {},
            "properties": {
                "width": {"type": "integer", "default": 64},
                "depth": {"type": "integer", "default": 50},
                "num_workers": {"type": "integer", "default": 4},
            },
        },
        "names": {"type": "object", "additionalProperties": {"type": "integer"}, "default": {}},
        "steps": {"type": "integer", "default": 10},
    },
}


def test_compare_groups_by_the_comment_that_explains(tmp_path: Path) -> None:
    demo = tmp_path / "demo.yaml"
    paper = tmp_path / "paper.yaml"
    demo.write_text(
        "run: demo\n"
        "lr: 0.5          # from scratch\n"
        "net:             # a tiny net\n"
        "  width: 8\n"
        "  depth: 50\n"
        "  num_workers: 0\n"
        "names: {a: 1}    # its classes\n"
        "steps: 3\n"
    )
    paper.write_text("run: paper\nnet: {depth: 101}\nnames: {b: 2, c: 3}\n")
    rows, operational, unexplained = ds.compare(demo, paper, TINY_SCHEMA)
    assert [(r.key, r.demo, r.paper, r.why) for r in rows] == [
        (("lr",), ["0.5"], ["0.1"], "from scratch"),
        (("net",), ["width: 8", "depth: 50"], ["width: 64", "depth: 101"], "a tiny net"),
        (("names",), ["{a: 1}"], ["{b: 2, c: 3}"], "its classes"),
    ]
    assert operational == [("run",), ("net", "num_workers")]
    assert unexplained == [("steps",)]
    with pytest.raises(DataError, match=r"demo.yaml: no comment .* in: steps"):
        ds.block(demo, paper, TINY_SCHEMA)


def _flat(m: Any, at: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every path to a non-mapping value (mappings always entered)."""
    if isinstance(m, dict) and m:
        out: dict[tuple[str, ...], Any] = {}
        for k, v in m.items():
            out.update(_flat(v, (*at, k)))
        return out
    return {at: m}


def test_the_shipped_demo_explains_every_difference() -> None:
    rows, operational, unexplained = ds.compare(DEMO, PAPER, SCHEMA)
    assert unexplained == [], "comment these keys in config/config.yaml"
    # a second method: every path where the two resolved configs differ, found by entering
    # every mapping, lies under a row's key or an operational leaf, and every row holds one
    demo, paper = (_flat(gpu_hours.load_config([p])) for p in (DEMO, PAPER))
    differ = {p for p in demo.keys() | paper.keys() if demo.get(p, "?") != paper.get(p, "?")}
    covers = [r.key for r in rows] + operational
    assert all(any(p[: len(c)] == c for c in covers) for p in differ)
    assert all(any(p[: len(r.key)] == r.key for p in differ) for r in rows)
    # what the demo file says, read by plain YAML
    raw = yaml.safe_load(DEMO.read_text())
    row = next(r for r in rows if r.key == ("make_cam", "scales"))
    assert row.demo == [yaml.safe_dump(raw["make_cam"]["scales"], default_flow_style=True).strip()]
    assert row.paper == ["[1.0, 0.5, 1.5, 2.0]"]


def test_a_difference_without_a_comment_is_refused(tmp_path: Path) -> None:
    text = DEMO.read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("scales:"))
    bare = tmp_path / "config.yaml"
    bare.write_text(text.replace(line, line.split("#")[0].rstrip()))
    with pytest.raises(DataError, match=r"config.yaml: no comment .* in: make_cam\.scales"):
        ds.block(bare, PAPER, SCHEMA)


def test_reproducing_holds_the_generated_table() -> None:
    """REPRODUCING's command, as printed but without ``--write``, from the repository root:
    it prints the block the document holds."""
    cmd = [sys.executable, "-m", "qaclims.report.readme", "--demo-settings"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    text = (ROOT / "docs" / "REPRODUCING.md").read_text()
    assert "python -m qaclims.report.readme --demo-settings --write\ndocs/REPRODUCING.md" in text
    markers = (ds.BEGIN, ds.END)
    assert readme.replace_block(text, out.strip(), "REPRODUCING.md", markers) == text, (
        "run python -m qaclims.report.readme --demo-settings --write docs/REPRODUCING.md"
    )
