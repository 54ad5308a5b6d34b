"""Render a project with Copier into a temporary folder, set it up, then move it into place.

Nothing is half-written: every step runs in a sibling temporary folder (same filesystem, so the
final move is a rename), and the destination is only touched once all steps succeeded.

The template is the local one (template.template_root()) or a git URL at a tag or commit
(--template URL --ref REF). The answers file never names a local folder: a project rendered from
one records the canonical template URL instead (see record_template).
"""

from __future__ import annotations

import contextlib
import difflib
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
from reprostack.errors import Cancelled, ReprostackError
from reprostack.template import template_root, template_url
from reprostack.vcs import init_dvc, init_git

Progress = Callable[[str], None]
# Shown the answers, the project folder and the DVC remote before anything is written: go ahead?
Review = Callable[[Mapping[str, Any], Path, Path], bool]
ANSWERS_FILE = ".copier-answers.yml"
# What Copier 9 takes for a git URL as it is; any other URL is handed over with a `git+` prefix.
_COPIER_GIT = ("git@", "git://", "git+", "https://github.com/", "https://gitlab.com/", "gh:", "gl:")
_URL = re.compile(r"^(git\+)?(https?|ssh|git|file)://\S+$|^[\w.-]+@[\w.-]+:\S+$|^g[hl]:\S+$")
_BYTECODE = ("__pycache__", "*.py[co]")
# Pseudo file systems and device folders: nothing a project can live in.
_SYSTEM = tuple(Path(p) for p in ("/proc", "/sys", "/dev", "/run"))
# The project is staged beside DIR as ".<DIR>.reprostack-<8 random>": that name must fit too.
_STAGING_EXTRA = len(".") + len(".reprostack-") + 8
# Questions whose choices depend on an earlier answer (copier.yml renders them per site).
_CHOICES_DEPEND_ON = {"node_type": "chameleon_site"}
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
    """Refuse, before anything is written, a DIR the project cannot or must not go to: a file or
    device, a system folder, a name too long to stage, a folder that cannot be written, an existing
    non-empty folder without --force, and (even with --force) a folder whose replacement would be
    a disaster: /, the home folder, the current folder or one above it, a mount point, the template."""
    special = next((root for root in _SYSTEM if dst == root or root in dst.parents), None)
    if special is not None:
        raise ReprostackError(
            f"DIR: '{dst}' is under {special}, a system folder that holds no projects; "
            "accepted: a new or empty folder in your home, scratch or project space"
        )
    if dst.exists() and not dst.is_dir():
        what = "a file" if dst.is_file() else "not a folder (a device, socket or pipe)"
        raise ReprostackError(f"DIR: '{dst}' exists and is {what}; accepted: a new or empty folder")
    limit = _name_max(dst) - _STAGING_EXTRA
    if len(os.fsencode(dst.name)) > limit:
        raise ReprostackError(
            f"DIR: the folder name '{dst.name[:40]}...' is {len(os.fsencode(dst.name))} bytes long; "
            f"accepted: at most {limit} (the file system allows {_name_max(dst)}, and the project is "
            "staged beside it under a longer name)"
        )
    if dst.is_dir() and any(dst.iterdir()):
        if not force:
            raise ReprostackError(
                f"DIR: '{dst}' exists and is not empty; accepted: a new or empty folder, "
                "or pass --force to replace it"
            )
        if reason := _irreplaceable(dst):
            raise ReprostackError(
                f"DIR: '{dst}' is {reason}; --force never replaces it; accepted: a new or empty folder"
            )
    elif dst.is_dir() and os.path.ismount(dst):
        raise ReprostackError(
            f"DIR: '{dst}' is a mount point, and the project is moved into place by a rename, which "
            "a mount point refuses; accepted: a folder inside it"
        )
    _check_writable(dst.parent, "DIR", dst)


def _name_max(path: Path) -> int:
    """The longest file name (bytes) the file system holding `path` accepts."""
    try:
        return os.pathconf(_existing(path.parent), "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _irreplaceable(dst: Path) -> str | None:
    cwd = Path.cwd().resolve()
    template = template_root().resolve()
    if dst == Path(dst.anchor):
        return "the file system root"
    if dst == Path.home().resolve():
        return "your home folder"
    if dst == cwd or dst in cwd.parents:
        return "the current folder or one above it"
    if os.path.ismount(dst):
        return "a mount point"
    if dst == template or dst in template.parents:
        return "the reprostack template or a folder holding it"
    if template in dst.parents and not (_ignored(template, dst) and (dst / ".copier-answers.yml").is_file()):
        return ("inside the reprostack template (only an earlier project in a git-ignored folder, such "
                "as build/example, is replaced)")
    return None


def _ignored(checkout: Path, path: Path) -> bool:
    """Whether git ignores `path` in `checkout`: scratch space (build/), never the template's own
    files. A template that is not a git checkout (an installed package) has none. Even there only
    an earlier project is replaced, never .venv/ or bench/results/."""
    proc = subprocess.run(["git", "-C", str(checkout), "check-ignore", "-q", str(path)],
                          capture_output=True, check=False)
    return proc.returncode == 0


def _check_writable(folder: Path, field: str, target: Path) -> None:
    """One line if `folder` (to be created if missing) cannot be written: tried by making and
    removing a temporary folder in its nearest existing ancestor, so nothing is left behind."""
    base = _existing(folder)
    if not base.is_dir():
        raise ReprostackError(
            f"{field}: '{target}' cannot be created: '{base}' is a file, not a folder; "
            "accepted: a path whose parents are folders"
        )
    try:
        probe = tempfile.mkdtemp(prefix=".reprostack-probe-", dir=base)
    except OSError as error:
        raise ReprostackError(
            f"{field}: '{target}' cannot be created: '{base}' is not writable ({error.strerror}); "
            "accepted: a folder you can write to"
        ) from None
    Path(probe).rmdir()


def check_remote(remote: Path, dst: Path, given: bool) -> None:
    """Refuse, before anything is written, a DVC remote folder that cannot be written or would
    land inside the project (git would commit it; --force would delete it)."""
    field = "--dvc-remote" if given else "--dvc-remote (default: beside DIR)"
    special = next((root for root in _SYSTEM if remote == root or root in remote.parents), None)
    if special is not None:
        raise ReprostackError(
            f"{field}: '{remote}' is under {special}, a system folder; accepted: a folder you can write to"
        )
    if remote == dst or dst in remote.parents:
        raise ReprostackError(
            f"{field}: '{remote}' is inside the project '{dst}', where git would commit the data; "
            "accepted: a folder outside it (the default is beside it)"
        )
    if remote.exists() and not remote.is_dir():
        raise ReprostackError(f"{field}: '{remote}' exists and is not a folder; accepted: a folder")
    _check_writable(remote if remote.exists() else remote.parent, field, remote)


def check_known(data: Mapping[str, Any], questions: Mapping[str, Any]) -> None:
    """One line for an answer to no question (a typo would otherwise be ignored, and the default
    used), naming the nearest question; and for one the template derives itself (`when: false`)."""
    asked = [name for name, details in questions.items()
             if not name.startswith("_") and not (isinstance(details, dict) and details.get("when") is False)]
    for key in data:
        if key in asked:
            continue
        if key in questions:
            raise ReprostackError(
                f"{key}: derived by the template from the other answers, not asked; remove it "
                "from --data/--answers"
            )
        close = difflib.get_close_matches(key, asked, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"accepted: {', '.join(asked)}"
        raise ReprostackError(f"{key}: not a question of this template (--data/--answers); {hint}")


def _local_questions(source: Source) -> dict[str, Any] | None:
    """The questions of a template on this machine, read before anything is asked; None for a
    URL template (checked once Copier has fetched it)."""
    if not source.local:
        return None
    try:
        loaded = yaml.safe_load((Path(source.path) / "copier.yml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


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
    dst: Path, data: Mapping[str, Any], defaults: bool, source: Source | None = None, *, pretend: bool = False
) -> dict[str, Any]:
    """Run Copier into `dst` (a fresh folder) and return the answers (as the answers file records
    them). `pretend` asks the questions and writes nothing. Validation errors become one-line
    ReprostackErrors; Ctrl-C at a prompt becomes Cancelled."""
    source = source or template_source()
    with warnings.catch_warnings(), _no_git_prompt():
        # Rendering from a checkout with uncommitted changes is normal while developing templates.
        warnings.simplefilter("ignore")
        try:
            worker = copier.run_copy(
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
                pretend=pretend,
            )
        except KeyboardInterrupt:  # Copier's CopierAnswersInterrupt too (a CopierError as well)
            raise Cancelled("cancelled at a prompt", interrupted=True) from None
        except ProcessExecutionError as error:
            raise ReprostackError(_git_failure(error, source)) from None
        except ValueError as error:
            if str(error).startswith("Unknown revision"):
                raise ReprostackError(_unknown_ref(source)) from None
            raise ReprostackError(explain(str(error), data)) from None
        except copier.errors.CopierError as error:
            raise ReprostackError(explain(str(error), data)) from None
    check_known(data, worker.template.questions_data)
    if not pretend and not (dst / ANSWERS_FILE).is_file():
        raise ReprostackError(
            f"{source.option}: '{source.name}' rendered no {ANSWERS_FILE}, so it is not a reprostack "
            "template; " + _TEMPLATE_ACCEPTED
        )
    return {k: v for k, v in worker.answers.user.items() if k not in worker.answers.hidden}


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
        field, accepted = match.group(1), match.group(3).replace("'", "")
        if depends := _CHOICES_DEPEND_ON.get(field):
            given = data.get(depends) or _questions().get(depends, {}).get("default")
            return f"{field}: '{match.group(2)}' is not offered at {depends} {given}; accepted: {accepted}"
        return f"{field}: '{match.group(2)}' is not known; accepted: {accepted}"
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
    review: Review | None = None,
) -> Path:
    """Create a complete project at `dst` and return its resolved path.

    `template` is a git URL (or folder) of the template, default the local one; `ref` a tag,
    branch or commit of it. Without `defaults` the questions are asked first (nothing is written
    while they are); `review` then sees the answers and may stop with nothing written.
    """
    dst = dst.expanduser().resolve()
    check_destination(dst, force)
    source = template_source(template, ref)
    remote = (dvc_remote or default_remote(dst)).expanduser().resolve()
    check_remote(remote, dst, given=dvc_remote is not None)
    answers = dict(data or {})
    if (questions := _local_questions(source)) is not None:
        check_known(answers, questions)
    if not defaults:
        with tempfile.TemporaryDirectory(prefix="reprostack-ask-") as scratch:
            answers = render(Path(scratch) / dst.name, answers, False, source, pretend=True)
        if review is not None and not review(answers, dst, remote):
            raise Cancelled("not confirmed")
    made = _make_folders(dst.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.reprostack-", dir=dst.parent))
    except BaseException:
        _remove_empty(made)
        raise
    staging.chmod(0o755)  # mkdtemp makes it private; the project should not be
    try:
        where = source.name + (f" at {source.ref}" if source.ref and source.ref != "HEAD" else "")
        progress(f"rendering the template ({where})")
        render(staging, answers, True, source)
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
        _remove_empty(made)
        raise
    return dst


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, deepest last."""
    missing = [folder, *folder.parents]
    missing = [path for path in missing if not path.exists()][::-1]
    try:
        for path in missing:
            path.mkdir()
    except OSError as error:
        _remove_empty([path for path in missing if path.exists()])
        raise ReprostackError(f"DIR: cannot create '{folder}': {error.strerror}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders this run created, deepest first, if they are still empty."""
    for path in reversed(folders):
        with contextlib.suppress(OSError):
            path.rmdir()


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
