"""Speed records: what a benchmark measured and where, and the README table made from them.

The benchmarks in ``benchmarks/`` take ``--record FILE``: each measured comparison is appended
to ``FILE`` as one JSON line (:func:`append`) with the machine it ran on. ``python -m
qaclims.report.readme --speed FILE ... --write README.md`` turns the records into the README's
speed table (:func:`table`), so no speed figure is typed by hand. ``benchmarks/gpu_check.sh``
records to ``OUT/speed.jsonl``; the records the README shows live in
``benchmarks/records/``.

A record: ``bench`` (script name), ``what`` (the row: workload and sizes), ``unit`` (e.g.
``img/s``; ``ms/img`` and other ``ms/...`` units are lower-is-better), ``reference`` (the
reference-style loop on the same inputs, or null), ``ours`` (this implementation),
``device`` (``cpu`` or the GPU's name), ``threads`` (torch CPU threads, or null), and where
it ran: ``machine`` (CPU model and count), ``torch``, ``date`` (UTC, ISO), ``commit`` (``git
describe --dirty``: ``-dirty`` when the checkout had uncommitted changes); optional ``stage``
(the rule the measurement stands for in the GPU-hours table).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qaclims.core.errors import DataError

BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
FIELDS = ("bench", "what", "unit", "reference", "ours", "device", "threads", "machine")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def append(
    path: str | os.PathLike[str],
    *,
    bench: str,
    what: str,
    unit: str,
    ours: float,
    reference: float | None = None,
    device: str = "cpu",
    threads: int | None | str = "torch",
    stage: str | None = None,
) -> dict[str, Any]:
    """Append one record (see the module doc) to the JSON-lines file ``path``; returns it.

    ``ours``/``reference``: positive finite rates or times in ``unit``; ``device``: ``cpu`` or
    ``cuda[:i]`` (recorded as the GPU's name); ``threads``: CPU threads or worker processes of
    the measurement, ``None``, or ``"torch"`` (default): torch's thread count on the CPU, none
    on a GPU; ``stage``: the workflow rule whose network ran at the paper config's settings
    (the GPU-hours table, :mod:`qaclims.report.gpu_hours`, divides that stage's work by
    ``ours``), or ``None``."""
    for name, v in (("ours", ours), ("reference", reference)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"speed record {what!r}: {name} must be positive, got {v}")
    try:
        import torch

        version: str | None = torch.__version__
        if threads == "torch":
            threads = None if device.startswith("cuda") else torch.get_num_threads()
        if device.startswith("cuda"):
            device = torch.cuda.get_device_name(torch.device(device))
    except ImportError:
        version = None
    if isinstance(threads, str):
        threads = None
    rec = {
        "bench": bench,
        "what": what,
        "unit": unit,
        "reference": None if reference is None else float(reference),
        "ours": float(ours),
        "device": device,
        "threads": threads,
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "torch": version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
    }
    if stage is not None:
        rec["stage"] = stage
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def read(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Every record of the files, in order; a line that is not a record raises
    :class:`DataError` naming the file and line."""
    out = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"speed records {path} do not exist")
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: not JSON ({e.msg})") from e
            missing = [k for k in FIELDS if not isinstance(rec, dict) or k not in rec]
            if missing:
                raise DataError(f"{path}:{i}: a speed record lacks {missing}")
            out.append(rec)
    return out


def _lower_is_better(unit: str) -> bool:
    return unit.startswith(("ms/", "s/"))


def number(v: float) -> str:
    """A rate or time for the tables: 3 significant digits below 100, whole above."""
    return f"{v:#.3g}" if v < 100 else f"{v:.0f}"


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (bench, what, device, threads), the latest record of each, in
    first-seen order; the speed-up of this implementation over the reference-style loop
    (reference / ours for times); and where the rows ran, one line per machine."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r["bench"], r["what"], r["device"], r["threads"])
        latest.pop(key, None)
        latest[key] = r
    if not latest:
        raise DataError("no speed records")
    order = sorted(latest.values(), key=lambda r: (r["device"] == "cpu", r["bench"]))
    lines = [
        "| what | device | reference-style loop | this implementation | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in order:
        dev = r["device"] if r["threads"] is None else f"{r['device']}, {r['threads']} threads"
        ref, ours, unit = r["reference"], r["ours"], r["unit"]
        if ref is None:
            ref_s, up = "", ""
        else:
            ref_s = f"{number(ref)} {unit}"
            up = f"{(ref / ours if _lower_is_better(unit) else ours / ref):.2f}×"
        lines.append(f"| {r['what']} | {dev} | {ref_s} | {number(ours)} {unit} | {up} |")
    where = sorted(
        {(r["machine"], r["torch"] or "no torch", r["date"], r["commit"] or "?") for r in order}
    )
    notes = "; ".join(f"{m} (torch {t}, {d}, commit {c})" for m, t, d, c in where)
    return "\n".join(lines) + f"\n\nMeasured on {notes}."


def block(paths: Iterable[str | os.PathLike[str]]) -> str:
    """The README's speed block (markers included) from the record files ``paths``."""
    paths = list(paths)
    src = ", ".join(f"`{Path(p).as_posix()}`" for p in paths)
    return "\n".join([BEGIN, table(read(paths)), "", f"Records: {src}.", END])
