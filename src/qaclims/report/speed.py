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

A dry-run record (``benchmarks/bench_dag.py``, :func:`append_dag`) has ``"table": "dag"`` and,
instead of the rates, ``config``, ``shards``, ``jobs``, ``edges`` (dependency edges of the
``--dag`` graph), ``seconds`` (the workflow's dry run) and ``floor`` (Snakemake's own dry run
of trivial rules with the same job counts), with ``snakemake`` (its version) and the same
``machine``/``date``/``commit``; :func:`dag_table` makes the README's dry-run table from them
and :func:`table` leaves them out.
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
DAG_BEGIN, DAG_END = "<!-- dag:begin -->", "<!-- dag:end -->"
DAG_FIELDS = ("bench", "config", "shards", "jobs", "edges", "seconds", "floor", "machine")


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


def _write(path: str | os.PathLike[str], rec: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(json.dumps(rec) + "\n")


def _where() -> dict[str, Any]:
    """Where a measurement ran: ``machine``, ``date`` (UTC), ``commit``."""
    return {
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "commit": _commit(),
    }


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
        "torch": version,
        **_where(),
    }
    if stage is not None:
        rec["stage"] = stage
    _write(path, rec)
    return rec


def append_dag(
    path: str | os.PathLike[str],
    *,
    config: str,
    shards: int,
    jobs: int,
    edges: int,
    seconds: float,
    floor: float,
    snakemake: str,
) -> dict[str, Any]:
    """Append one dry-run record (see the module doc) to ``path``; returns it. ``seconds``
    and ``floor``: positive finite wall times of the dry runs; ``jobs``/``edges``/``shards``:
    positive counts; ``snakemake``: its version."""
    for name, v in (("seconds", seconds), ("floor", floor)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(
                f"dry-run record {config} x {shards}: {name} must be positive, got {v}"
            )
    for name, n in (("shards", shards), ("jobs", jobs), ("edges", edges)):
        if n < 1:
            raise ValueError(f"dry-run record {config} x {shards}: {name} must be >= 1, got {n}")
    rec = {"bench": "bench_dag.py", "table": "dag", "config": config, "shards": int(shards),
           "jobs": int(jobs), "edges": int(edges), "seconds": float(seconds),
           "floor": float(floor), "snakemake": snakemake, **_where()}  # fmt: skip
    _write(path, rec)
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
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{i}: a speed record is a JSON object, not {rec!r}")
            kind = rec.get("table", "speed")
            if kind not in ("speed", "dag"):
                raise DataError(f"{path}:{i}: unknown record table {kind!r} (speed, dag)")
            missing = [k for k in (DAG_FIELDS if kind == "dag" else FIELDS) if k not in rec]
            if missing:
                raise DataError(f"{path}:{i}: a {kind} record lacks {missing}")
            out.append(rec)
    return out


def _lower_is_better(unit: str) -> bool:
    return unit.startswith(("ms/", "s/"))


def number(v: float) -> str:
    """A rate or time for the tables: 3 significant digits below 100, whole above."""
    return f"{v:#.3g}" if v < 100 else f"{v:.0f}"


def _latest(
    records: list[dict[str, Any]], kind: str, key: tuple[str, ...]
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The records of table ``kind`` (``speed`` where a record names none), the latest of
    each ``key`` (a later record replaces an earlier one), ordered by each key's latest
    record."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        if r.get("table", "speed") == kind:
            k = tuple(r[f] for f in key)
            latest.pop(k, None)
            latest[k] = r
    return latest


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (bench, what, device, threads), the latest record of each, in
    first-seen order; the speed-up of this implementation over the reference-style loop
    (reference / ours for times); and where the rows ran, one line per machine."""
    latest = _latest(records, "speed", ("bench", "what", "device", "threads"))
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


def dag_table(records: list[dict[str, Any]]) -> str:
    """Markdown: the dry-run records (``"table": "dag"``), the latest of each (config, shards,
    machine), by config and shard count; the workflow's seconds over Snakemake's floor; and
    where they ran. DataError when there are none."""
    latest = _latest(records, "dag", ("config", "shards", "machine"))
    if not latest:
        raise DataError("no dry-run records (benchmarks/bench_dag.py --record)")
    lines = [
        "| config | shards | jobs | dependency edges | dry run | Snakemake's floor | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(latest.values(), key=lambda r: (r["config"], r["machine"], r["shards"])):
        lines.append(
            f"| `{r['config']}` | {r['shards']} | {r['jobs']:,} | {r['edges']:,} "
            f"| {r['seconds']:.2f} s | {r['floor']:.2f} s | {r['seconds'] / r['floor']:.2f} |"
        )
    where = sorted(
        {(r["machine"], r.get("snakemake") or "?", r["date"], r["commit"] or "?")
         for r in latest.values()}
    )  # fmt: skip
    notes = "; ".join(f"{m} (Snakemake {v}, {d}, commit {c})" for m, v, d, c in where)
    return "\n".join(lines) + f"\n\nMeasured on {notes}."


def block(paths: Iterable[str | os.PathLike[str]]) -> str:
    """The README's speed block (markers included) from the record files ``paths``."""
    paths = list(paths)
    src = ", ".join(f"`{Path(p).as_posix()}`" for p in paths)
    return "\n".join([BEGIN, table(read(paths)), "", f"Records: {src}.", END])


def dag_block(paths: Iterable[str | os.PathLike[str]]) -> str:
    """The README's dry-run block (markers included) from the record files ``paths``; it
    names the files that hold dry-run records."""
    per_file = {Path(p): read([p]) for p in paths}
    records = [r for recs in per_file.values() for r in recs]
    src = ", ".join(
        f"`{p.as_posix()}`"
        for p, recs in per_file.items()
        if any(r.get("table") == "dag" for r in recs)
    )
    return "\n".join([DAG_BEGIN, dag_table(records), "", f"Records: {src}.", DAG_END])
