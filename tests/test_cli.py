"""The command line as a person meets it: real prompts on a pseudo-terminal, and one line for every
refusal (exit 2, no traceback, nothing written)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest
from conftest import reprostack

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DOWN, ENTER, CLEAR_LINE = "\x1b[B", "\r", "\x15"
# Answered up front, so the session asks only project name, site and node type.
PRESET = ["author=Ann Lee", "author_email=", "author_affiliation=", "license=BSD-3-Clause",
          "copyright_year=2025", "framework=sklearn", "data_source=sample", "seed=7"]


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> pexpect.spawn:
    # No cursor-position requests: pexpect does not answer them, and prompt_toolkit would wait.
    child = pexpect.spawn(sys.executable, ["-m", "reprostack.cli", *args], cwd=str(cwd), encoding="utf-8",
                          timeout=60, dimensions=(50, 200),
                          env={**env, "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"})
    child.logfile_read = open(cwd / "session.log", "w")  # noqa: SIM115 (closed with the child)
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    child.expect(pexpect.EOF)
    child.close()
    child.logfile_read.close()
    text = ANSI.sub("", Path(child.logfile_read.name).read_text()).replace("\r", "")
    return child.exitstatus, text


def test_interactive_session_asks_summarises_and_confirms(tmp_path: Path, env: dict[str, str]) -> None:
    args = ["new", str(tmp_path / "paper")]
    for answer in PRESET:
        args += ["--data", answer]
    child = spawn(args, env, tmp_path)
    child.expect("Project name")
    child.send(CLEAR_LINE + "my-paper" + ENTER)
    child.expect("Chameleon site")
    child.send(DOWN + DOWN + ENTER)  # CHI@TACC, CHI@UC, KVM@TACC
    child.expect("Chameleon node type")
    child.expect("m1.large")  # the site's flavors are offered ...
    child.send(DOWN + ENTER)
    child.expect("Create the project with these answers")
    child.send("y")
    code, text = finish(child)
    assert code == 0, text
    offered = text[text.index("Chameleon node type"):text.index("reprostack: about to create")]
    assert "gpu_rtx_6000" not in offered and "g1.h100.pci.1" in offered  # ... and only those
    summary = text[text.index("reprostack: about to create"):text.index("Create the project")]
    for line in ("project_name        my-paper", "chameleon_site      KVM@TACC",
                 "node_type           m1.xlarge",
                 "license             BSD-3-Clause", f"DVC remote          {tmp_path / 'paper-dvc-remote'}"):
        assert line in summary, summary
    # Nothing is rendered until the questions are answered and confirmed.
    assert text.index("reprostack: rendering") > text.index("Create the project")
    assert "Initialized DVC" not in text and "Traceback" not in text
    config = (tmp_path / "paper" / "config" / "config.yaml").read_text()
    assert "node_type: \"m1.xlarge\"" in config and "site: \"KVM@TACC\"" in config
    assert "BSD 3-Clause" in (tmp_path / "paper" / "LICENSE").read_text()


@pytest.mark.parametrize("where", ["first prompt", "confirmation"])
def test_ctrl_c_prints_one_line_and_writes_nothing(tmp_path: Path, env: dict[str, str], where: str) -> None:
    target = tmp_path / "new" / "deeper" / "paper"
    args = ["new", str(target)]
    for answer in [*PRESET, "chameleon_site=CHI@UC", "node_type=gpu_p100"]:
        args += ["--data", answer]
    child = spawn(args, env, tmp_path)
    child.expect("Project name")
    if where == "confirmation":
        child.send(ENTER)
        child.expect("Create the project with these answers")
    child.sendintr()
    code, text = finish(child)
    assert code == 130
    after = text[text.rindex("Create the project" if where == "confirmation" else "Project name"):]
    lines = [line for line in after.splitlines()[1:] if line.strip()]
    assert [line for line in lines if "reprostack" in line] == ["reprostack: cancelled; nothing was written"]
    assert "Traceback" not in text and "rendering" not in text
    assert not (tmp_path / "new").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"hf-home", "session.log"}


def test_declining_the_summary_writes_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    args = ["new", str(tmp_path / "paper")]
    for answer in [*PRESET, "project_name=p", "chameleon_site=CHI@TACC", "node_type=gpu_p100"]:
        args += ["--data", answer]
    child = spawn(args, env, tmp_path)
    child.expect("Create the project with these answers")
    child.send("n")
    code, text = finish(child)
    assert code == 1 and "reprostack: cancelled; nothing was written" in text
    assert not (tmp_path / "paper").exists() and not (tmp_path / "paper-dvc-remote").exists()


def test_quiet_non_interactive_run(tmp_path: Path, env: dict[str, str]) -> None:
    proc = reprostack(["new", str(tmp_path / "p"), "--defaults"], env)
    assert "Initialized DVC" not in proc.stdout + proc.stderr and "commit the changes" not in proc.stdout
    assert proc.stdout.startswith(f"Created {tmp_path / 'p'}")


def _refused(tmp_path: Path, env: dict[str, str], args: list[str], *expected: str) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = reprostack(["new", *args], env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or (len(lines) == 2 and "rendering" in lines[0]), proc.stderr
    assert lines[-1].startswith("reprostack: error: ")
    for part in expected:
        assert part in lines[-1], lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was left behind"
    return lines[-1]


def test_unknown_data_key_names_the_nearest_question(tmp_path: Path, env: dict[str, str]) -> None:
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--data", "framwork=sklearn"],
             "framwork: not a question", "did you mean framework?")
    answers = tmp_path / "answers.yml"
    answers.write_text("project_nme: x\n")
    _refused(tmp_path, env, [str(tmp_path / "p"), "--answers", str(answers)], "project_nme:", "project_name")
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--data", "package=x"],
             "package: derived by the template")


def test_over_long_names(tmp_path: Path, env: dict[str, str]) -> None:
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--data", "project_name=" + "a" * 41],
             "project_name: ", "41 characters", "at most 40")
    _refused(tmp_path, env, [str(tmp_path / ("d" * 240)), "--defaults"], "DIR: the folder name", "bytes long")


@pytest.mark.parametrize(
    ("target", "expected"),
    [("/dev/null", "DIR: '/dev/null' is under /dev"),
     ("/proc/reprostack-test", "a system folder"),
     ("{tmp}/file.txt", "exists and is a file"),
     ("{tmp}/file.txt/p", "is a file, not a folder")],
)
def test_special_targets(tmp_path: Path, env: dict[str, str], target: str, expected: str) -> None:
    (tmp_path / "file.txt").write_text("mine")
    _refused(tmp_path, env, [target.format(tmp=tmp_path), "--defaults"], expected)
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_force_never_replaces_home_or_the_current_folder(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    home = {**env, "HOME": str(tmp_path)}
    _refused(tmp_path, home, [str(tmp_path), "--defaults", "--force"], "your home folder", "--force never")
    proc = reprostack(["new", ".", "--defaults", "--force"], env, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "the current folder" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _deny_writes(monkeypatch: pytest.MonkeyPatch, under: Path) -> None:
    """As root every mode allows writing, so make the write probe fail as it does for a user
    without rights (a real chmod is used when the tests do not run as root)."""
    import tempfile

    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        folder = Path(kwargs.get("dir", "."))
        if folder == under or under in folder.parents:
            raise PermissionError(13, "Permission denied")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


@pytest.mark.parametrize("what", ["DIR", "--dvc-remote"])
def test_unwritable_target_or_remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], what: str) -> None:
    from reprostack.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:
        _deny_writes(monkeypatch, locked)
    target, remote = (locked / "p", tmp_path / "r") if what == "DIR" else (tmp_path / "p", locked / "r")
    try:
        code = main(["new", str(target), "--defaults", "--dvc-remote", str(remote)])
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"reprostack: error: {what}: ") and "not writable (Permission denied)" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked"] and not any(locked.iterdir())


def test_remote_inside_the_project(tmp_path: Path, env: dict[str, str]) -> None:
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--dvc-remote", str(tmp_path / "p" / "r")],
             "--dvc-remote: ", "inside the project")


def test_remote_folder_that_cannot_be_written(tmp_path: Path, env: dict[str, str]) -> None:
    """A remote whose parent is a read-only file system (root ignores modes, so use one that
    refuses writes to everybody: a tmpfs is not at hand, /proc/sys is read-only)."""
    (tmp_path / "file.txt").write_text("mine")
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--dvc-remote", str(tmp_path / "file.txt")],
             "--dvc-remote: ", "exists and is not a folder")
    _refused(tmp_path, env,
             [str(tmp_path / "p"), "--defaults", "--dvc-remote", str(tmp_path / "file.txt" / "remote")],
             "--dvc-remote: ", "is a file, not a folder")
    proc = reprostack(["new", str(tmp_path / "p"), "--defaults", "--dvc-remote", "/proc/sys/reprostack"],
                      env, check=False)
    assert proc.returncode == 2 and "--dvc-remote: '/proc/sys/reprostack'" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_node_type_not_offered_at_the_site(tmp_path: Path, env: dict[str, str]) -> None:
    _refused(tmp_path, env, [str(tmp_path / "p"), "--defaults", "--data", "chameleon_site=KVM@TACC",
                             "--data", "node_type=gpu_p100"],
             "node_type: 'gpu_p100' is not offered at chameleon_site KVM@TACC",
             "accepted: g1.h100.pci.1, m1.xlarge, m1.large")
