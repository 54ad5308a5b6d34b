"""What the results were made with: packages (checked against the lock), hardware, git, front end.

Everything here is cheap (no network, no framework import in the run-time facts) so provenance
costs well under a second per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOCK = "requirements.lock"
# torch is locked apart, one hashed lock per accelerator build (pytorch projects only).
TORCH_LOCKS = {"cpu": "requirements-torch-cpu.lock", "cuda": "requirements-torch-cuda.lock"}
# Pipeline outputs change during every run; they are not code, so they do not make a tree dirty.
OUTPUT_PATHS = ("results", "dvc.lock", "data", "models", "mlruns.db", "mlartifacts")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


class LockMismatch(SystemExit):
    """Installed packages differ from the lock; the message names each one."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_lock(root: Path = ROOT) -> Path | None:
    """The torch lock that fits the torch build installed here; None in a project without torch.

    The local version label names the build: +cpu, the CPU lock; none (PyPI's Linux build, which
    bundles CUDA) or +cuXXX, the CUDA lock. Other builds (+rocm...) have no lock of their own and
    are checked against the CPU lock: torch's version and the dependencies every build shares.
    Without torch installed, the CPU lock, so that the check names torch as missing.
    """
    locks = {build: root / name for build, name in TORCH_LOCKS.items() if (root / name).exists()}
    if not locks:
        return None
    try:
        label = metadata.version("torch").partition("+")[2]
    except metadata.PackageNotFoundError:
        label = "cpu"
    cuda = label.startswith("cu") or (not label and sys.platform == "linux")
    return locks.get("cuda" if cuda else "cpu") or next(iter(locks.values()))


def lock_files(root: Path = ROOT) -> list[Path]:
    """The locks this environment is checked against: requirements.lock and the fitting torch lock."""
    files = [root / LOCK, torch_lock(root)]
    return [path for path in files if path is not None and path.exists()]


def pins(root: Path = ROOT) -> dict[str, str]:
    """name -> version for every `name==version` line of the lock files that apply here.

    The local version label (torch 2.13.0+cpu) is dropped: it names a build, not a version.
    """
    found: dict[str, str] = {}
    for path in lock_files(root):
        for line in path.read_text().splitlines():
            match = _PIN.match(line.strip())
            if match:
                found[normalise(match.group(1))] = match.group(2).split("+", 1)[0]
    return found


def installed() -> dict[str, str]:
    """name -> version of every installed distribution (pip freeze's view).

    Read from the Name and Version headers alone: `dist.metadata` parses each whole METADATA file
    (long descriptions included) with the email parser, about 0.6 s in a large environment; this
    reads the same two headers in a tenth of that.
    """
    found = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name:
            found[normalise(name)] = version
    return found


def _name_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """The first Name and Version headers of a distribution's metadata (what dist.metadata["Name"]
    and dist.version give), from the header block before the first blank line."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, colon, value = line.partition(":")
        if colon and key in ("Name", "Version"):
            headers.setdefault(key, value.strip())
    return headers.get("Name"), headers.get("Version")


def check_lock(root: Path = ROOT, have: dict[str, str] | None = None) -> None:
    """Raise LockMismatch naming every pinned package that is missing or at another version
    (`have`: installed(), when the caller has it already).

    A local version label (torch 2.13.0+cpu, +cu130) names the build for an accelerator; it picks
    the torch lock (torch_lock) and is recorded, not enforced.
    """
    have = installed() if have is None else have
    problems = []
    for name, version in sorted(pins(root).items()):
        found = have.get(name)
        if found is None:
            problems.append(f"'{name}' is pinned to {version} but not installed")
        elif found.split("+", 1)[0] != version:
            problems.append(f"'{name}' is pinned to {version} but {found} is installed")
    if problems:
        torch = torch_lock(root) is not None
        raise LockMismatch(
            "environment: installed packages differ from the lock: "
            + "; ".join(problems)
            + ". Install the lock: pip install --require-hashes -r requirements.lock"
            + (", then torch from " + " or ".join(TORCH_LOCKS.values()) + " (their first lines say how)"
               if torch else "")
        )


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def gpus() -> list[dict[str, str]]:
    """GPU model, driver and memory from nvidia-smi (or rocm-smi); empty on a CPU-only machine."""
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if out:
        rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
        cuda = _run(["nvidia-smi"]) or ""
        match = re.search(r"CUDA Version:\s*([\d.]+)", cuda)
        return [
            {"vendor": "nvidia", "name": r[0], "driver": r[1], "memory": r[2],
             "cuda_driver_api": match.group(1) if match else "unknown"}
            for r in rows
        ]
    out = _run(["rocm-smi", "--showproductname", "--csv"])
    if out:
        return [{"vendor": "amd", "name": line} for line in out.splitlines()[1:] if line.strip()]
    return []


def _framework_build() -> dict[str, Any]:
    """The accelerator build of torch, if this project uses it (CUDA runtime it was built for).

    A build without CUDA or ROCm (torch/version.py says so) has no CUDA to ask about: its facts
    are read from that file, sparing the environment step a second of importing torch.
    """
    constants = _torch_version_constants()
    if constants is None:
        return {}
    cpu_only = "cuda" in constants and constants["cuda"] is None and constants.get("hip") is None
    if cpu_only and "__version__" in constants:
        return {"torch": constants["__version__"], "torch_cuda": None, "cuda_available": False,
                "cudnn": None}
    try:
        import torch
    except ImportError:
        return {}
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }


def _torch_version_constants() -> dict[str, Any] | None:
    """The literal constants of torch/version.py, found without importing torch; None without
    torch. A file that cannot be read gives {}, so the caller imports torch."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return literal_constants(Path(next(iter(spec.submodule_search_locations))) / "version.py")
    except (OSError, SyntaxError, ValueError):
        return {}


def literal_constants(path: Path) -> dict[str, Any]:
    """The module-level names a Python file binds to literals, read without importing it (nor
    what it imports)."""
    import ast

    constants: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and node.value is not None:
            with contextlib.suppress(ValueError, TypeError, SyntaxError):
                constants[target.id] = ast.literal_eval(node.value)
    return constants


def environment(root: Path = ROOT, packages: dict[str, str] | None = None) -> dict[str, Any]:
    """Software and hardware facts for results/environment.json, and where and when they were taken.

    `recorded` makes each record unique to one working copy and moment, on purpose: the steps
    after it depend on this file, so a fresh clone recomputes everything on its own machine even
    when someone pulled the author's outputs, with `dvc repro` as with Snakemake. `packages`:
    installed(), when the caller has it already.
    """
    import datetime
    import socket

    lock = root / LOCK
    return {
        "recorded": {
            "host": socket.gethostname(),
            "workdir": str(root.resolve()),
            "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "os": {"name": _os_name(), "kernel": platform.release(), "machine": platform.machine()},
        "cpu": {"model": _cpu_model(), "logical_cores": os.cpu_count()},
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": gpus(),
        "framework_build": _framework_build(),
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None,
        "torch_lock": torch.name if (torch := torch_lock(root)) else None,
        "packages": dict(sorted((installed() if packages is None else packages).items())),
    }


def git_state(root: Path = ROOT) -> dict[str, Any]:
    """Commit, branch, dirty flag and the diff of code and config against HEAD (outputs excluded)."""
    commit = _run(["git", "rev-parse", "HEAD"], root)
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "diff": "", "untracked": []}
    spec = [".", *(f":(exclude){p}" for p in OUTPUT_PATHS)]
    diff = _run(["git", "diff", "HEAD", "--", *spec], root) or ""
    untracked = (_run(["git", "ls-files", "--others", "--exclude-standard", "--", *spec], root) or "")
    untracked_files = [line for line in untracked.splitlines() if line]
    return {
        "commit": commit,
        "branch": _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], root),
        "dirty": bool(diff or untracked_files),
        "diff": diff,
        "untracked": untracked_files,
    }


def front_end() -> dict[str, str]:
    """Which front end started this step, and its command line (found among our ancestors)."""
    pid = os.getppid()
    for _ in range(12):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            text = " ".join(a.decode(errors="replace") for a in argv if a)
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        words = [Path(a.decode(errors="replace")).name for a in argv[:3] if a]
        for tool in ("snakemake", "dvc"):
            if tool in words:
                return {"front_end": tool, "command_line": text}
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
    return {"front_end": "direct", "command_line": " ".join(sys.argv)}


TOOLS = ("snakemake", "dvc", "mlflow", "torch", "scikit-learn", "numpy")


def tool_versions(packages: dict[str, str] | None = None) -> dict[str, str]:
    """The versions of the tools a run is made with; from `packages` (installed()'s answer, as
    results/environment.json records it) when given."""
    if packages is not None:
        return {name: packages[name] for name in TOOLS if name in packages}
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def freeze(packages: dict[str, str] | None = None) -> str:
    """pip-freeze-style listing of the installed packages (of `packages`, installed()'s answer)."""
    listed = installed() if packages is None else packages
    return "".join(f"{name}=={version}\n" for name, version in sorted(listed.items()))
