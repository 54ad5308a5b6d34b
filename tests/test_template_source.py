"""Where a project's template comes from, and what its answers file says about it.

A template repository with two tags (v0.1.0, v0.2.0) is built from this working tree and served by
`git daemon`; `reprostack new --template URL --ref TAG` renders from it, and plain `copier update`
in a clone of the project (another HOME, nothing of the first render's machine) brings v0.2.0 in,
with a conflict where the user changed the same line. A built wheel renders offline from the
template it ships. The answers file never names a folder on the machine that rendered it.
Generation only: no pipeline runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, make_env, reprostack, run
from loopback import free_port, git_daemon

CANONICAL = "https://github.com/reprostack/reprostack.git"
ANSWERS = ".copier-answers.yml"
V2_COMMENT = "# v0.2.0: the share of rows held out for evaluation"
V2_README = "(template v0.2.0)"


def copy_working_tree(dst: Path, env: dict[str, str]) -> None:
    """This checkout's tracked and untracked, not ignored files, as they are now; symlinks kept."""
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], ROOT, env).stdout
    for rel in sorted(set(filter(None, listed.split("\0")))):
        src, target = ROOT / rel, dst / rel
        if not os.path.lexists(src):  # deleted in the working tree, not yet in the index
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(src.readlink())
        else:
            shutil.copy2(src, target)


def edit_line(path: Path, marker: str, change) -> None:
    """Replace the first line holding `marker` by change(line)."""
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if marker in line)
    lines[index] = change(lines[index].rstrip("\n")) + "\n"
    path.write_text("".join(lines))


def v2_comment_line(line: str) -> str:
    return line.split("#", 1)[0].rstrip() + "   " + V2_COMMENT


def git(cwd: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["git", *args], cwd, env, check=check)


def answers_of(project: Path) -> dict:
    return yaml.safe_load((project / ANSWERS).read_text())


def no_local_path(project: Path, *folders: Path) -> None:
    text = (project / ANSWERS).read_text()
    for folder in (ROOT, *folders):
        assert str(folder) not in text, text
    for key, value in answers_of(project).items():
        assert not str(value).startswith(("/", "~", "file:", ".")), (key, value)


@dataclass
class TemplateRepo:
    url: str  # git://127.0.0.1:PORT/reprostack
    path: Path  # the repository the daemon serves
    tmp: Path
    env: dict[str, str]


def base_env(tmp: Path) -> dict[str, str]:
    """make_env, with Copier's mirror cache in tmp (not the user's) and no REPROSTACK_TEMPLATE."""
    env = make_env(tmp)
    env.pop("REPROSTACK_TEMPLATE", None)
    env.pop("COPIER_CACHE_DIR", None)
    env["XDG_CACHE_HOME"] = str(tmp / "cache")
    return env


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemplateRepo]:
    """This working tree committed and tagged v0.1.0, then one config and one README line changed
    and tagged v0.2.0; served by git daemon."""
    tmp = tmp_path_factory.mktemp("template-source")
    env = base_env(tmp)
    repo = tmp / "src" / "reprostack"
    copy_working_tree(repo, env)
    assert (repo / "templates/project/workflow").is_symlink()
    git(repo, env, "init", "--quiet", "--initial-branch=main")
    git(repo, env, "add", "--all")
    git(repo, env, "commit", "--quiet", "--no-verify", "-m", "v0.1.0")
    git(repo, env, "tag", "v0.1.0")
    edit_line(repo / "templates/project/config/config.yaml.jinja", "test_size:", v2_comment_line)
    readme = repo / "templates/project/README.md.jinja"
    edit_line(readme, "# {{ project_name }}", lambda line: f"{line} {V2_README}")
    git(repo, env, "commit", "--quiet", "--no-verify", "-am", "v0.2.0")
    git(repo, env, "tag", "v0.2.0")
    with git_daemon(tmp / "src") as base:
        yield TemplateRepo(f"{base}/reprostack", repo, tmp, env)


@pytest.fixture(scope="module")
def v1_project(template_repo: TemplateRepo) -> Path:
    """`reprostack new p --defaults --template URL --ref v0.1.0`."""
    reprostack(["new", str(template_repo.tmp / "p"), "--defaults", "--template", template_repo.url,
                "--ref", "v0.1.0"], template_repo.env, cwd=template_repo.tmp)
    return template_repo.tmp / "p"


def clone(project: Path, dst: Path, env: dict[str, str]) -> Path:
    git(dst.parent, env, "clone", "--quiet", str(project), str(dst))
    return dst


def copier_update(project: Path, env: dict[str, str], ref: str) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "copier"), "update", "--defaults", "--vcs-ref", ref], project, env, check=False)


@pytest.mark.slow
def test_url_template_at_a_tag_is_recorded(v1_project: Path, template_repo: TemplateRepo) -> None:
    answers = answers_of(v1_project)
    assert answers["_src_path"] == template_repo.url
    assert answers["_commit"] == "v0.1.0"
    no_local_path(v1_project, template_repo.tmp)
    config = (v1_project / "config/config.yaml").read_text()
    assert "test_size:" in config and V2_COMMENT not in config
    assert V2_README not in (v1_project / "README.md").read_text()
    # The first commit holds this answers file; the secrets came from the rendered stack.py.
    committed = git(v1_project, template_repo.env, "show", f"HEAD:{ANSWERS}").stdout
    assert committed == (v1_project / ANSWERS).read_text()
    assert git(v1_project, template_repo.env, "status", "--porcelain").stdout == ""
    assert "POSTGRES_PASSWORD=" in (v1_project / ".env").read_text()
    assert not (v1_project / "workflow").is_symlink()


@pytest.mark.slow
def test_url_template_without_ref_takes_the_latest_tag(template_repo: TemplateRepo) -> None:
    tmp = template_repo.tmp
    reprostack(["new", str(tmp / "latest"), "--defaults", "--template", template_repo.url],
               template_repo.env, cwd=tmp)
    assert answers_of(tmp / "latest")["_commit"] == "v0.2.0"
    assert V2_COMMENT in (tmp / "latest/config/config.yaml").read_text()


@pytest.mark.slow
def test_copier_update_in_a_clone_elsewhere(
    v1_project: Path, template_repo: TemplateRepo, tmp_path: Path
) -> None:
    (tmp_path / "home2").mkdir()
    env = {k: v for k, v in template_repo.env.items() if k not in ("XDG_CACHE_HOME", "COPIER_CACHE_DIR")}
    env["HOME"] = str(tmp_path / "home2")
    project = clone(v1_project, tmp_path / "clone", env)
    proc = copier_update(project, env, "v0.2.0")
    assert proc.returncode == 0, proc.stderr
    assert V2_COMMENT in (project / "config/config.yaml").read_text()
    assert V2_README in (project / "README.md").read_text()
    answers = answers_of(project)
    assert answers["_commit"] == "v0.2.0" and answers["_src_path"] == template_repo.url
    assert git(project, env, "ls-files", "-u").stdout == ""
    assert (tmp_path / "home2" / ".cache" / "copier").is_dir(), "the mirror came from this HOME"


@pytest.mark.slow
def test_copier_update_conflict_is_left_unmerged(
    v1_project: Path, template_repo: TemplateRepo, tmp_path: Path
) -> None:
    env = template_repo.env
    project = clone(v1_project, tmp_path / "clone", env)
    edit_line(project / "config/config.yaml", "test_size:", lambda _: "  test_size: 0.3   # mine")
    git(project, env, "commit", "--quiet", "-am", "A smaller training set")
    proc = copier_update(project, env, "v0.2.0")
    assert proc.returncode == 0, proc.stderr
    unmerged = git(project, env, "ls-files", "-u").stdout
    assert {line.split("\t")[1] for line in unmerged.splitlines()} == {"config/config.yaml"}
    config = (project / "config/config.yaml").read_text()
    assert "<<<<<<< " in config and "=======" in config and ">>>>>>> " in config
    assert "test_size: 0.3   # mine" in config and V2_COMMENT in config
    assert answers_of(project)["_commit"] == "v0.2.0"
    # Neither front end reads a half-merged config: one line naming the file, nothing run.
    for cmd in (["snakemake", "--cores", "1", "-n"], ["python", "workflow/scripts/environment.py"]):
        refused = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        assert refused.returncode != 0
        assert ("unresolved merge conflicts in config/config.yaml (left by `copier update` or a merge)"
                in refused.stderr), refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (project / "results").exists()


@pytest.mark.slow
def test_local_git_template_records_the_canonical_url(template_repo: TemplateRepo) -> None:
    """From a folder (a checkout): the canonical URL, and the tag git described."""
    tmp, env = template_repo.tmp, template_repo.env
    reprostack(["new", str(tmp / "at-tag"), "--defaults", "--template", str(template_repo.path),
                "--ref", "v0.1.0"], env, cwd=tmp)
    assert answers_of(tmp / "at-tag") == {**answers_of(tmp / "at-tag"), "_src_path": CANONICAL,
                                          "_commit": "v0.1.0"}
    no_local_path(tmp / "at-tag", tmp)
    # REPROSTACK_TEMPLATE at a clean checkout whose HEAD is v0.2.0: no --ref, the checkout as it is.
    at_checkout = {**env, "REPROSTACK_TEMPLATE": str(template_repo.path)}
    reprostack(["new", str(tmp / "head"), "--defaults"], at_checkout, cwd=tmp)
    assert answers_of(tmp / "head")["_src_path"] == CANONICAL
    assert answers_of(tmp / "head")["_commit"] == "v0.2.0"
    assert V2_COMMENT in (tmp / "head/config/config.yaml").read_text()


@pytest.mark.slow
def test_installed_wheel_renders_offline_from_its_template(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # Built from a copy of this working tree (the build writes build/ and *.egg-info beside its
    # source), with a marker only that copy's template has.
    src = tmp_path / "reprostack"
    copy_working_tree(src, env)
    edit_line(src / "templates/project/config/config.yaml.jinja", "test_size:", v2_comment_line)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("reprostack-*.whl")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert wheel.name.startswith(f"reprostack-{version}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        links = [i.filename for i in archive.infolist() if stat.S_ISLNK(i.external_attr >> 16)]
        metadata = archive.read(f"reprostack-{version}.dist-info/METADATA").decode()
    shipped = "reprostack/template/"
    for rel in ("copier.yml", "templates/project/config/config.yaml.jinja",
                "templates/project/workflow/Snakefile", "templates/project/workflow/scripts/stack.py",
                "workflow/Snakefile"):
        assert shipped + rel in names, rel
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert links == []
    assert f"Project-URL: Template, {CANONICAL}" in metadata

    site = tmp_path / "site"
    run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)
    # Bytecode allowed, as on a user's machine: none may reach the project.
    installed = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"PYTHONPATH": str(site)}
    where = run([sys.executable, "-c", "import reprostack, reprostack.template as t; "
                 "print(reprostack.__file__); print(t.template_root()); print(t.template_url())"],
                tmp_path, installed).stdout.split("\n")
    assert where[:3] == [str(site / "reprostack/__init__.py"), str(site / "reprostack/template"), CANONICAL]

    reprostack(["new", "q", "--defaults"], installed, cwd=tmp_path)
    q = tmp_path / "q"
    assert answers_of(q)["_src_path"] == CANONICAL
    assert answers_of(q)["_commit"] == f"v{version}" == "v0.2.0"
    no_local_path(q, tmp_path, site)
    assert V2_COMMENT in (q / "config/config.yaml").read_text(), "rendered from the shipped template"
    assert (q / "workflow/scripts/stack.py").is_file() and not (q / "workflow").is_symlink()
    assert not list(q.rglob("__pycache__")), "pip's bytecode must not reach the project"
    assert git(q, env, "status", "--porcelain").stdout == ""
    # A plain folder has no revisions: --ref needs --template.
    proc = reprostack(["new", "r", "--defaults", "--ref", "v0.1.0"], installed, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert one_error(proc).startswith("reprostack: error: --ref: 'v0.1.0' needs a git template")
    assert not (tmp_path / "r").exists()


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def refused(tmp: Path, env: dict[str, str], *args: str) -> str:
    """Run `new` in tmp/work (holding only keep.txt); it must fail with exit 2 and leave nothing."""
    work = tmp / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    proc = reprostack(["new", str(work / "p"), "--defaults", *args], env, cwd=tmp, check=False)
    assert proc.returncode == 2, proc.stderr
    assert [p.name for p in work.iterdir()] == ["keep.txt"]
    return one_error(proc)


def test_unreachable_template_url_is_one_line(tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/reprostack"
    error = refused(tmp_path, base_env(tmp_path), "--template", url, "--ref", "v0.1.0")
    assert error.startswith(f"reprostack: error: --template: '{url}' cannot be fetched")
    assert "; accepted: a git URL" in error


def test_template_that_is_no_url_nor_folder(tmp_path: Path) -> None:
    error = refused(tmp_path, base_env(tmp_path), "--template", "no/such/folder")
    assert error.startswith("reprostack: error: --template: 'no/such/folder' is neither a git URL")
    assert "; accepted: " in error


def test_unknown_ref_of_the_checkout(tmp_path: Path) -> None:
    error = refused(tmp_path, base_env(tmp_path), "--ref", "v9.9.9")
    assert error.startswith("reprostack: error: --ref: 'v9.9.9' is not a revision of ")
    assert "; accepted: " in error


@pytest.mark.slow
def test_unknown_ref_of_a_url_template(template_repo: TemplateRepo, tmp_path: Path) -> None:
    error = refused(tmp_path, base_env(tmp_path), "--template", template_repo.url, "--ref", "v9.9.9")
    assert error == (
        f"reprostack: error: --ref: 'v9.9.9' is not a revision of '{template_repo.url}'; "
        "accepted: one of its tags (v0.2.0, v0.1.0), a branch or a commit of that template"
    )


def test_versions_agree() -> None:
    import reprostack

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert reprostack.__version__ == pyproject["version"]
    from reprostack.template import TEMPLATE_URL

    assert pyproject["urls"]["Template"] == TEMPLATE_URL == CANONICAL


def test_help_names_the_template_options(tmp_path: Path) -> None:
    new = reprostack(["new", "--help"], base_env(tmp_path)).stdout
    assert "--template URL" in new and "--ref REF" in new


@pytest.mark.parametrize("commit", ["v0.2.0-3-gabcdef0", None])
def test_record_template_rewrites_two_lines_only(tmp_path: Path, commit: str | None) -> None:
    """Copier's header and the answers stay as written; a long folded local path goes entirely."""
    from reprostack.generate import Source, record_template

    folder = "/a folder/" + "with spaces " * 10
    header = "# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY\n"
    body = yaml.safe_dump({**({"_commit": commit} if commit else {}), "_src_path": folder,
                           "author": "A. Researcher", "seed": 42}, width=60)
    assert body.count("\n") > 4, "the long path is folded over several lines"
    (tmp_path / ANSWERS).write_text(header + body)
    record_template(tmp_path, Source(folder, "HEAD", "template", folder, local=True))
    text = (tmp_path / ANSWERS).read_text()
    assert text == header + (
        f"_commit: {commit or 'v0.2.0'}\n_src_path: {CANONICAL}\nauthor: A. Researcher\nseed: 42\n"
    )
    # From a URL, Copier's record stands.
    record_template(tmp_path, Source("git://h/r", "v1", "--template", "git://h/r", local=False))
    assert (tmp_path / ANSWERS).read_text() == text
