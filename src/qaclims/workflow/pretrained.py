"""``python -m qaclims.workflow.pretrained [--configfile FILE ...] [--fetch]``: the
pretrained models a run downloads (the run's config and every experiment cell's), where
each is in this machine's caches, exit status 1 while one is missing; ``--fetch`` downloads
what is missing (run it where the internet is reachable and the caches are the jobs', e.g.
a cluster's login node); exit status 2 for a config the workflow would reject. See
:mod:`qaclims.models.pretrained`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from qaclims.core.errors import ConfigError
from qaclims.models.model_cache import fetch, locate
from qaclims.models.pretrained import Pretrained, needed, offline


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m qaclims.workflow.pretrained",
        description="List (and with --fetch download) the pretrained models a run downloads.",
    )
    ap.add_argument(
        "--configfile",
        nargs="+",
        default=[],
        help="the run's config files, as given to snakemake (default: the demo's)",
    )
    ap.add_argument("--fetch", action="store_true", help="download what is not cached")
    args = ap.parse_args(argv)
    from qaclims.report.gpu_hours import load_config
    from qaclims.workflow import experiments

    root = Path(__file__).resolve().parents[3]
    try:
        config = load_config(args.configfile or [root / "config" / "config.yaml"])
    except ConfigError as e:  # a missing file, an unknown key, a bad value: as Snakemake says
        print(f"error: {e}", file=sys.stderr)
        return 2
    configs = [config] + [
        experiments.cell_config(config, c.variant, c.seed) for c in experiments.cells(config)
    ]
    seen: dict[tuple[str, str, str], list[Pretrained]] = {}
    for cfg in configs:
        for p in needed(cfg):
            same = seen.setdefault((p.source, p.name, p.tag), [])
            if p.key not in [k.key for k in same]:
                same.append(p)
    if not seen:
        print("this run downloads no pretrained model")
        return 0
    if args.fetch and offline():
        print("HF_HUB_OFFLINE is set: the hub's models cannot be downloaded (unset it to fetch)")
    lacking = 0
    for same in seen.values():
        p, keys = same[0], ", ".join(k.key for k in same)  # one model, every key naming it
        where = locate(p)
        if where is None and args.fetch:
            print(f"{keys}: {p.what}: downloading ...", flush=True)
            try:
                where = fetch(p)
            except Exception as e:  # no network, no such model, a full disk: say which
                print(f"{keys}: {p.what}: download failed: {type(e).__name__}: {e}")
        lacking += where is None
        print(f"{keys}: {p.what}: {where if where is not None else 'NOT CACHED'}")
    if lacking:
        print(f"{lacking} not cached: run again with --fetch where the internet is reachable")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
