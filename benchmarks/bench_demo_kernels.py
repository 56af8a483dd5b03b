"""How far the demo's QA-CLIMS figure moves with the CPU's kernels alone.

On identical inputs and seed (the run folder of ``bench_demo_seeds.py``, default
``results/demo-seeds``: its upstream stages are reused as they are), trains RITC again and
scores its CAMs once per choice of torch's CPU kernels (``ATEN_CPU_CAPABILITY``: ``default``,
``avx2``, ``avx512`` where the CPU has it), at the config's training threads. (Changing
``threads.train_torch`` instead would retrain every upstream network too: it is a
result-affecting setting.) Writes ``results/<run>/benchmarks/kernels.csv`` (one row per
setting: kernels, threads, baseline and QA-CLIMS mIoU) and prints it with the spread
(max - min) of the QA-CLIMS mIoU. The native kernels run last, so the folder is left as
``bench_demo_seeds.py`` leaves it at that seed.

    python benchmarks/bench_demo_kernels.py [--kernels default avx2]

``python -m qaclims.report.readme --seeds results/demo-seeds`` quotes the spread.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_demo_seeds import ROOT, cpu_kernels, run_evals  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", nargs="+", default=["default", "avx2", "avx512"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run", default="demo-seeds")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    shipped = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    own_threads = int(shipped["threads"]["train_torch"])
    native = cpu_kernels(native=True).lower()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    kernels = [k for k in args.kernels if k != "avx512" or "avx512f" in flags]
    kernels.sort(key=lambda k: k == native)  # the native kernels last
    over = {"train_ritc": {"seed": args.seed}}
    # first bring the folder up to date with the native kernels (a no-op when it is), so
    # that only RITC and after differ between the settings below
    run_evals(args.run, over, args.cores)
    rows = []
    for kernel in kernels:
        env = {"ATEN_CPU_CAPABILITY": kernel}
        _, miou, took = run_evals(args.run, over, args.cores, env, forcerun=("train_ritc",))
        rows.append({"kernels": kernel, "native": kernel == native, "threads": own_threads,
                     "cam": miou["cam"], "ritc": miou["ritc"], "seconds": took})  # fmt: skip
        print(f"{kernel}: QA-CLIMS {miou['ritc']:.2f} ({took:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    table["seed"] = args.seed
    table["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, native kernels {native}"
    out = ROOT / "results" / args.run / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "kernels.csv", index=False, float_format="%.4f")
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 140):
        print(table.to_string(index=False))
    print(
        f"QA-CLIMS mIoU spread over these settings: {table['ritc'].max() - table['ritc'].min():.2f}"
    )


if __name__ == "__main__":
    main()
