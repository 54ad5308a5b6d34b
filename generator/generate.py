"""Render a project with Copier into a temporary folder, set it up, then move it into place.

Nothing is half-written: every step runs in a sibling temporary folder (same filesystem, so the
final move is a rename), and the destination is only touched once all steps succeeded.

The template is the local one (template.template_root()) or a git URL at a tag or commit
(--template URL --ref REF). The answers file never names a local folder: a project rendered from
one records the canonical template URL instead (see record_template).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copier
import yaml
from plumbum import ProcessExecutionError
from reprostack.errors import ReprostackError
from reprostack.template import template_root, template_url
from reprostack.vcs import init_dvc, init_git

Progress = Callable[[str], None]
ANSWERS_FILE = ".copier-answers.yml"
# What Copier 9 takes for a git URL as it is; any other URL is handed over with a `git+` prefix.
_COPIER_GIT = ("git@", "git://", "git+", "https://github.com/", "https://gitlab.com/", "gh:", "gl:")
_URL = re.compile(r"^(git\+)?(https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$|^g[hl]:\S+$")
_BYTECODE = ("__pycache__", "*.py[co]")
_TEMPLATE_ACCEPTED = (
    "accepted: a git URL of a reprostack template (https://, ssh://, git://, user@host:path, "
    "gh:owner/name) or a folder holding copier.yml"
)


@dataclass(frozen=True)
class Source:
    """What Copier renders from: `path` (a URL or a folder) at `ref`."""

    path: str
    ref: str | None
    option: str  # for error messages: --template, or "template" for the local one
    name: str  # the template as the user named it, for error messages
    local: bool  # a folder on this machine: the answers file must name the canonical URL instead


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


def template_source(template: str | None = None, ref: str | None = None) -> Source:
    """Check --template/--ref before anything is written and say what Copier should render."""
    if ref is not None and (not ref.strip() or ref.startswith("-") or any(c.isspace() for c in ref)):
        raise ReprostackError(f"--ref: '{ref}' is not a git revision; accepted: a tag, branch or commit")
    if template is None:
        root = template_root()
        if ref is not None and not (root / ".git").exists():
            raise ReprostackError(
                f"--ref: '{ref}' needs a git template, but the local template '{root}' is a plain "
                f"folder, not a checkout; accepted: --template URL --ref {ref}, "
                f"e.g. --template {template_url()} --ref {ref}"
            )
        # HEAD of a checkout includes its uncommitted changes (normal while developing templates).
        return Source(str(root), ref or "HEAD", "template", str(root), local=True)
    folder = Path(template.removeprefix("file://")).expanduser()
    if not _URL.match(template) or template.startswith("file://"):
        if not (folder / "copier.yml").is_file():
            raise ReprostackError(
                f"--template: '{template}' is neither a git URL nor a folder holding copier.yml; "
                + _TEMPLATE_ACCEPTED
            )
        if ref is not None and not (folder / ".git").exists():
            raise ReprostackError(
                f"--ref: '{ref}' needs a git repository, but '{template}' is a plain folder; "
                "accepted: no --ref, or a git URL or checkout of the template"
            )
        return Source(str(folder.resolve()), ref or "HEAD", "--template", template, local=True)
    path = template if template.endswith(".git") or template.startswith(_COPIER_GIT) else f"git+{template}"
    # No --ref: Copier takes the template's latest release tag (HEAD when it has none).
    return Source(path, ref, "--template", template, local=False)


def render(
    dst: Path, data: Mapping[str, Any], defaults: bool, source: Source | None = None
) -> None:
    """Run Copier into `dst` (a fresh folder). Validation errors become one-line ReprostackErrors."""
    source = source or template_source()
    with warnings.catch_warnings(), _no_git_prompt():
        # Rendering from a checkout with uncommitted changes is normal while developing templates.
        warnings.simplefilter("ignore")
        try:
            copier.run_copy(
                source.path,
                str(dst),
                data=dict(data),
                defaults=defaults,
                vcs_ref=source.ref,
                # Copier drops no bytecode itself when the template sits in a subdirectory, and
                # pip compiles the template shipped in the wheel.
                exclude=_BYTECODE,
                quiet=True,
                overwrite=True,
                unsafe=False,
            )
        except ProcessExecutionError as error:
            raise ReprostackError(_git_failure(error, source)) from None
        except ValueError as error:
            if str(error).startswith("Unknown revision"):
                raise ReprostackError(_unknown_ref(source)) from None
            raise ReprostackError(explain(str(error), data)) from None
        except copier.errors.CopierError as error:
            raise ReprostackError(explain(str(error), data)) from None
        except KeyboardInterrupt:
            raise ReprostackError("interrupted; nothing was written") from None
    if not (dst / ANSWERS_FILE).is_file():
        raise ReprostackError(
            f"{source.option}: '{source.name}' rendered no {ANSWERS_FILE}, so it is not a reprostack "
            "template; " + _TEMPLATE_ACCEPTED
        )


@contextlib.contextmanager
def _no_git_prompt() -> Iterator[None]:
    """A template URL that wants a password fails at once, instead of waiting at a prompt
    (credential helpers still answer); a GIT_TERMINAL_PROMPT the user set wins."""
    before = os.environ.get("GIT_TERMINAL_PROMPT")
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GIT_TERMINAL_PROMPT", None)


def _git_failure(error: ProcessExecutionError, source: Source) -> str:
    """Copier's failed git command, as the option it concerns: fetching (--template) or the ref."""
    argv = [str(arg) for arg in error.argv]
    lines = [line.strip() for line in str(error.stderr).splitlines() if line.strip()]
    said = " ".join(lines[next((i for i, line in enumerate(lines) if line.startswith("fatal:")), -1):])
    said = f" ({said.removeprefix('fatal: ')})" if said else ""
    if "worktree" in argv or "checkout" in argv:
        return _unknown_ref(source)
    return f"{source.option}: '{source.name}' cannot be fetched{said}; " + _TEMPLATE_ACCEPTED


def _unknown_ref(source: Source) -> str:
    tags = _tags(source.path)
    known = (
        f"one of its tags ({', '.join(tags)}), a branch or a commit"
        if tags
        else "a tag, branch or commit"
    )
    return f"--ref: '{source.ref}' is not a revision of '{source.name}'; accepted: {known} of that template"


def _tags(url: str) -> list[str]:
    """The newest few tags of the template (best effort: an error message is no place to fail)."""
    try:
        proc = subprocess.run(
            ["git", "ls-remote", "--tags", "--refs", "--sort=-v:refname", "--", url.removeprefix("git+")],
            capture_output=True, text=True, timeout=15,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    tags = [line.rpartition("refs/tags/")[2] for line in proc.stdout.splitlines() if "refs/tags/" in line]
    return tags[:8] if proc.returncode == 0 else []


def record_template(root: Path, source: Source) -> None:
    """Make the answers file name the template by URL, never by a folder on this machine.

    Copier records where it rendered from. From a URL that is the URL and `_commit` the ref, as
    `copier update` needs. From a local folder (the checkout, or the template shipped in the
    wheel) `_src_path` becomes the canonical template URL; `_commit` stays what git described
    (e.g. v0.2.0, v0.2.0-3-gabcdef) or, from a plain folder, becomes v<reprostack version>.
    Only those two lines change: Copier's header and layout stay.
    """
    if not source.local:
        return
    from reprostack import __version__

    path = root / ANSWERS_FILE
    text = path.read_text()
    answers = yaml.safe_load(text) or {}
    updates = {"_commit": str(answers.get("_commit") or f"v{__version__}"), "_src_path": template_url()}
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    at: int | None = None
    skipping = False
    for line in lines:
        if skipping and line[:1] in (" ", "\t"):
            continue  # a folded continuation of a replaced value
        skipping = line.split(":", 1)[0] in updates
        if skipping:
            at = len(kept) if at is None else at
            continue
        kept.append(line)
    if at is None:  # after the header comments
        at = next((i for i, line in enumerate(kept) if line.strip() and not line.startswith("#")), len(kept))
    block = yaml.safe_dump(updates, sort_keys=False, allow_unicode=True, width=10**6)
    new = "".join([*kept[:at], block, *kept[at:]])
    if yaml.safe_load(new) != {**answers, **updates}:  # an unexpected layout: write it afresh
        new = "".join(line for line in lines if line.startswith("#"))
        new += yaml.safe_dump({**answers, **updates}, default_flow_style=False, allow_unicode=True)
    path.write_text(new)


def _questions() -> dict[str, Any]:
    try:
        return yaml.safe_load((template_root() / "copier.yml").read_text())
    except (OSError, ReprostackError):
        return {}


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
    template: str | None = None,
    ref: str | None = None,
    progress: Progress = _quiet,
) -> Path:
    """Create a complete project at `dst` and return its resolved path.

    `template` is a git URL (or folder) of the template, default the local one; `ref` a tag,
    branch or commit of it.
    """
    dst = dst.expanduser().resolve()
    check_destination(dst, force)
    source = template_source(template, ref)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remote = (dvc_remote or default_remote(dst)).expanduser().resolve()
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.reprostack-", dir=dst.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the project should not be
    try:
        where = source.name + (f" at {source.ref}" if source.ref and source.ref != "HEAD" else "")
        progress(f"rendering the template ({where})")
        render(staging, data or {}, defaults, source)
        record_template(staging, source)
        write_secrets(staging)
        progress("initialising DVC (remote: " + str(remote) + ")")
        init_dvc(staging, remote=remote)
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

    They are made here, not asked by Copier, so they never reach the answers file. The helpers
    come from the project just rendered (`root`), so they match the template it came from, a URL
    template included.
    """
    script = root / "workflow" / "scripts" / "stack.py"
    spec = importlib.util.spec_from_file_location("reprostack_stack", script)
    if spec is None or spec.loader is None or not script.is_file():
        raise ReprostackError(f"template: the rendered project has no '{script.relative_to(root)}'")
    stack = importlib.util.module_from_spec(spec)
    write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in it
    try:
        spec.loader.exec_module(stack)
    finally:
        sys.dont_write_bytecode = write_bytecode
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
