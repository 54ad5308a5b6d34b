"""Render a project with Copier into a temporary folder, set it up, then move it into place.

Nothing is half-written: every step runs in a sibling temporary folder (same filesystem, so the
final move is a rename), and the destination is only touched once all steps succeeded.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import copier
import yaml
from reprostack.errors import ReprostackError
from reprostack.template import template_root
from reprostack.vcs import init_dvc, init_git

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_remote(dst: Path) -> Path:
    """The default DVC remote: a folder beside the project, so it survives `rm -rf project`."""
    return dst.parent / f"{dst.name}-dvc-remote"


def check_destination(dst: Path, force: bool) -> None:
    """Refuse an existing non-empty destination unless --force was given."""
    if dst.exists() and not dst.is_dir():
        raise ReprostackError(f"DIR: '{dst}' exists and is not a folder; accepted: a new or empty folder")
    if dst.is_dir() and any(dst.iterdir()) and not force:
        raise ReprostackError(
            f"DIR: '{dst}' exists and is not empty; accepted: a new or empty folder, "
            "or pass --force to replace it"
        )


def render(dst: Path, data: Mapping[str, Any], defaults: bool) -> None:
    """Run Copier into `dst` (a fresh folder). Validation errors become one-line ReprostackErrors."""
    with warnings.catch_warnings():
        # Rendering from a checkout with uncommitted changes is normal while developing templates.
        warnings.simplefilter("ignore")
        try:
            copier.run_copy(
                str(template_root()),
                str(dst),
                data=dict(data),
                defaults=defaults,
                vcs_ref="HEAD",
                quiet=True,
                overwrite=True,
                unsafe=False,
            )
        except (ValueError, copier.errors.CopierError) as error:
            raise ReprostackError(explain(str(error), data)) from None
        except KeyboardInterrupt:
            raise ReprostackError("interrupted; nothing was written") from None


def _questions() -> dict[str, Any]:
    return yaml.safe_load((template_root() / "copier.yml").read_text())


def explain(message: str, data: Mapping[str, Any]) -> str:
    """Copier's messages, reworded to one line naming the field, the value and what is accepted."""
    message = " ".join(message.split())
    if match := re.match(r"Validation error for question '(\w+)': (.*)", message):
        return match.group(2)
    if match := re.match(r"Invalid choice for '(\w+)': '(.*)' is not in \[(.*)\]", message):
        accepted = match.group(3).replace("'", "")
        return f"{match.group(1)}: '{match.group(2)}' is not known; accepted: {accepted}"
    if match := re.match(r'Question "(\w+)" is required', message):
        field = match.group(1)
        hint = _questions().get(field, {}).get("help", "")
        return f"{field}: no value given; it is required with these answers ({hint})"
    if match := re.match(r"invalid literal for int\(\) with base \d+: '(.*)'", message):
        fields = [k for k, v in data.items() if str(v) == match.group(1)] or ["an answer"]
        return f"{fields[0]}: '{match.group(1)}' is not an integer; accepted: a whole number"
    return message


def generate(
    dst: Path,
    data: Mapping[str, Any] | None = None,
    *,
    defaults: bool = False,
    force: bool = False,
    dvc_remote: Path | None = None,
    progress: Progress = _quiet,
) -> Path:
    """Create a complete project at `dst` and return its resolved path."""
    dst = dst.expanduser().resolve()
    check_destination(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remote = (dvc_remote or default_remote(dst)).expanduser().resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.reprostack-", dir=dst.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the project should not be
    try:
        progress("rendering the template")
        render(staging, data or {}, defaults)
        write_secrets(staging)
        progress("initialising DVC (remote: " + str(remote) + ")")
        init_dvc(staging, remote=remote, final_root=dst)
        progress("initialising git and committing")
        init_git(staging)
        progress(f"moving into place: {dst}")
        _move_into_place(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst


def write_secrets(root: Path) -> None:
    """Random credentials for the project's service stack, in .env (mode 600, gitignored).

    They are made here, not asked by Copier, so they never reach the answers file.
    """
    spec = importlib.util.spec_from_file_location(
        "reprostack_stack", template_root() / "workflow" / "scripts" / "stack.py"
    )
    assert spec is not None and spec.loader is not None
    stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stack)
    stack.write_env(root / ".env", stack.new_secrets())


def _move_into_place(staging: Path, dst: Path) -> None:
    """Swap the finished project in; an old destination (--force) is removed only after the swap."""
    old: Path | None = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.reprostack-old")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
    try:
        staging.rename(dst)
    except OSError:
        if old is not None:
            old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
