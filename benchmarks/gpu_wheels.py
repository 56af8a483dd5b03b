"""Fetch into ``.whl/`` the packages a lent GPU machine lacks for ``benchmarks/gpu_check.sh``.

The device machines (``../.library/device/``) run an image with Python 3.12 and a CUDA
build of torch, and reach no package index: what the workflow needs beyond that image
(the Snakemake driver and its plugins, open_clip, pycocotools, lemminflect, jsonschema,
...) travels with the working tree as wheels, at most 64 MiB together with the tree.
``gpu_check.sh`` installs whatever ``.whl/`` holds into ``/tmp/site`` first.

Which packages: the dependency closure of ``qaclims[torch,vqa,crf,report,workflow]`` read
from this environment's installed metadata (so the versions are the pinned ones CI tests),
evaluated for CPython 3.12 on Linux x86-64, less

- what the device image holds (:data:`DEVICE_IMAGE`, as ``KINDS.md`` lists it), unless a
  carried package needs it in a version range the image is not known to meet (its version
  unknown, or outside the range; :data:`TRUST_IMAGE` names the large ones trusted anyway),
  and except transformers (:data:`CARRY_ANYWAY`: the BLIP code is tested with ours);
- its GPU stack (torch, torchvision, triton, ``nvidia-*``, ``cuda-*``): the image's CUDA
  torch is the one to measure, and ours would not fit;
- packages only an unused code path imports (:data:`NOT_IMPORTED`: PuLP, 16 MB, is imported
  by Snakemake's ILP scheduler only; ``gpu_check.sh`` runs ``--scheduler greedy``).

Checked here with the pyenv CPython 3.12 and the image's other packages from PyPI: the
wheels install with ``--no-deps --target`` and the demo DAG dry-runs. The script prints
what travels and its size against the budget.

    python benchmarks/gpu_wheels.py            # list, download, check, print the size
    python benchmarks/gpu_wheels.py --dry-run  # list only

``--check`` (also run after a download) reads every fetched wheel's ``Requires-Dist`` and
fails naming any requirement that neither a fetched wheel nor the device image provides.
pydensecrf2 has no wheel on PyPI: its source archive travels, and ``gpu_check.sh`` builds
it there (a failed build leaves the CRF stages out and says so).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 64 * 2**20  # the device tool's limit on the travelling tree, wheels included
EXTRAS = ("torch", "vqa", "crf", "report", "workflow")
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
          "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
SOURCE_ONLY = frozenset({"pydensecrf2"})  # no wheel on PyPI: built on the device

# The device image's Python packages, as ../.library/device/KINDS.md lists them (read from a
# machine on 2026-11-17); the GPU stack among them is never carried.
DEVICE_IMAGE = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
# Versions the device's pip list showed (KINDS.md); other image packages' versions are unknown.
DEVICE_VERSIONS = {"numpy": "2.5.2", "safetensors": "0.8.0", "torch": "2.11.0",
                   "torchvision": "0.26.0", "huggingface-hub": "1.33.0",
                   "tokenizers": "0.23.2", "transformers": "5.17.0"}  # fmt: skip
# Image packages too large to carry: their (unknown) versions are trusted.
TRUST_IMAGE = frozenset({"numpy", "pandas", "pyarrow", "pillow", "matplotlib", "scipy"})
CARRY_ANYWAY = frozenset({"transformers"})  # the BLIP code is tested against this version
NOT_IMPORTED = frozenset({"pulp"})


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_stack(name: str) -> bool:
    return name in {"torch", "torchvision", "torchaudio", "triton"} or name.startswith(
        ("nvidia-", "cuda-")
    )


def _env(extra: str = "") -> dict[str, str]:
    env = {k: str(v) for k, v in default_environment().items()}
    env.update(TARGET, extra=extra)
    return env


def _wanted(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate(_env(e)) for e in (extras or {""}))


def closure(root: str = "qaclims", extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{normalised name: installed version}`` of ``root[extras]`` and everything it needs
    on the target (CPython 3.12, Linux x86-64), from this environment's metadata; ``root``
    itself excluded. Raises naming a requirement this environment does not hold."""
    found: dict[str, str] = {}
    todo: list[tuple[str, set[str], str]] = [(root, set(extras), "")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, want, via = todo.pop()
        key = (norm(name), frozenset(want))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} (needed by {via}) is not installed here") from None
        if norm(name) != norm(root):
            found[norm(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if _wanted(req, want):
                todo.append((req.name, set(req.extras), name))
    return found


def _requirements(name: str) -> list[Requirement]:
    return [
        r for r in map(Requirement, metadata.distribution(name).requires or []) if _wanted(r, set())
    ]


def plan(found: dict[str, str]) -> dict[str, str]:
    """The part of :func:`closure` that must travel: what the image lacks, what
    :data:`CARRY_ANYWAY` names, and every image package that a travelling one needs in a
    version range the image is not known to meet (its version unknown, or outside the
    range), unless :data:`TRUST_IMAGE` names it; never the GPU stack or
    :data:`NOT_IMPORTED`."""
    keep = {
        n
        for n in found
        if not gpu_stack(n) and n not in NOT_IMPORTED
        and (n not in DEVICE_IMAGE or n in CARRY_ANYWAY)
    }  # fmt: skip
    todo = sorted(keep)
    while todo:
        for req in _requirements(todo.pop()):
            n = norm(req.name)
            if n in keep or n not in found or gpu_stack(n) or n in NOT_IMPORTED:
                continue
            known = DEVICE_VERSIONS.get(n)
            met = known is not None and req.specifier.contains(known, prereleases=True)
            if str(req.specifier) and not met and n not in TRUST_IMAGE:
                keep.add(n)
                todo.append(n)
    return {n: found[n] for n in sorted(keep)}


def download(carry: dict[str, str], dest: Path) -> None:
    """Wheels for CPython 3.12 manylinux x86-64; a pure-Python package published only as a
    source archive is built into a wheel here (``py3-none-any``); the :data:`SOURCE_ONLY`
    ones travel as their source archive."""
    dest.mkdir(exist_ok=True)
    for old in [*dest.glob("*.whl"), *dest.glob("*.tar.gz")]:  # an earlier plan's
        old.unlink()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    plat = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    for p in PLATFORMS:
        plat += ["--platform", p]
    for n, v in carry.items():
        spec, out = f"{n}=={v}", ["--no-deps", "-d", str(dest)]
        if n in SOURCE_ONLY:
            subprocess.run([*pip, "download", *out, "--no-binary=:all:", spec], check=True)
            continue
        got = subprocess.run([*pip, "download", *out, *plat, spec], capture_output=True)
        if got.returncode == 0:
            continue
        built = dest / f".build-{n}"
        subprocess.run([*pip, "wheel", "--no-deps", "-w", str(built), spec], check=True)
        for w in built.glob("*.whl"):
            if not w.name.endswith("-py3-none-any.whl"):
                raise SystemExit(f"{spec}: no wheel for the target, and {w.name} is not pure")
            w.replace(dest / w.name)
        built.rmdir()


def _archive_name(path: Path) -> str:
    stem = path.name.removesuffix(".tar.gz").removesuffix(".whl")
    return norm(re.split(r"-(?=\d)", stem, maxsplit=1)[0])


def check(dest: Path) -> list[str]:
    """Requirements of the wheels in ``dest`` that neither ``dest`` nor the image provides
    (``"wheel: requirement"`` each; empty when complete)."""
    have = {_archive_name(p) for p in dest.iterdir()} | DEVICE_IMAGE
    missing = []
    for whl in sorted(dest.glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            msg = Parser().parsestr(z.read(meta).decode())
        for line in msg.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if _wanted(req, set()) and norm(req.name) not in have | NOT_IMPORTED:
                missing.append(f"{whl.name}: {line}")
    return missing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    ap.add_argument("--dry-run", action="store_true", help="list what would travel, fetch nothing")
    ap.add_argument("--check", action="store_true", help="only check the wheels in --dest")
    args = ap.parse_args()
    if not args.check:
        carry = plan(closure())
        for n, v in carry.items():
            print(f"{n}=={v}")
        print(f"{len(carry)} packages to carry")
        if args.dry_run:
            return
        download(carry, args.dest)
    missing = check(args.dest)
    for m in missing:
        print("not provided:", m)
    tree = sum(
        (ROOT / f).stat().st_size
        for f in subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()  # fmt: skip
        if (ROOT / f).is_file()
    )
    wheels = sum(p.stat().st_size for p in args.dest.iterdir())
    print(
        f"{args.dest}: {wheels / 2**20:.1f} MiB in {len(list(args.dest.iterdir()))} files; "
        f"with the tracked tree {(wheels + tree) / 2**20:.1f} MiB of {BUDGET / 2**20:.0f}"
    )
    if missing or wheels + tree > BUDGET:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
