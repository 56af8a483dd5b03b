"""What a job ran with: the workflow's code version and the software and machine under it.

Every workflow job writes :func:`software` (and, once its device is known, :func:`torch_info`)
to its rule's log file (:func:`qaclims.core.logs.provenance`), so a result can be traced to
the commit of this repository (and whether its code had local changes), the Python, the
host, torch with its CUDA and cuDNN builds, and the GPU it ran on.

Standard library only at import; torch is read only if the caller has imported it.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from pathlib import Path

import qaclims

#: the checkout holding this library (``<root>/src/qaclims``)
CHECKOUT = Path(qaclims.__file__).resolve().parents[2]
#: the paths whose local edits count as "local changes" (what computes results)
CODE_PATHS = ("src", "workflow", "Snakefile")


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


@functools.cache
def code_version(root: Path = CHECKOUT) -> str:
    """``"qaclims 0.1.0, git <40 hex>"``, with ``" + local changes"`` when tracked files under
    :data:`CODE_PATHS` differ from that commit; ``"qaclims 0.1.0 (no git commit)"`` where
    ``root`` is not a git checkout, git is missing or refuses the folder (another user's
    checkout without ``safe.directory``)."""
    head = _git(root, "rev-parse", "HEAD")
    if not head:
        return f"qaclims {qaclims.__version__} (no git commit)"
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    return f"qaclims {qaclims.__version__}, git {head}" + (" + local changes" if dirty else "")


def software() -> str:
    """One line: :func:`code_version`, Python, OS and machine, host name."""
    return (
        f"{code_version()}; python {platform.python_version()}; "
        f"{platform.system()} {platform.machine()}; host {platform.node()}"
    )


def torch_info(device: str) -> str:
    """torch's version with its CUDA and cuDNN builds and, for ``device`` ``cuda[:i]``, the
    GPU's name; ``""`` when torch has not been imported by the caller."""
    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    cuda = torch.version.cuda
    build = f"CUDA {cuda}, cuDNN {torch.backends.cudnn.version()}" if cuda else "CPU build"
    where = device
    if device.startswith("cuda") and torch.cuda.is_available():
        where = f"{device} {torch.cuda.get_device_name(torch.device(device))}"
    return f"torch {torch.__version__} ({build}); device {where}"
