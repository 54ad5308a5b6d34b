"""Bad answers: one line naming the field, the value and what is accepted; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import reprostack

SHA = "0123456789abcdef0123456789abcdef01234567"

CASES = [
    (["project_name=My Project"], "project_name", "'My Project'", "accepted"),
    (["project_name=class"], "project_name", "'class'", "not a Python keyword"),
    (["framework=jax"], "framework", "'jax'", "accepted: pytorch, sklearn"),
    (["data_source=ftp"], "data_source", "'ftp'", "accepted: sample, huggingface, git, url"),
    (["data_source=huggingface", "hf_repo_id=no-slash", f"hf_revision={SHA}"],
     "hf_repo_id", "'no-slash'", "owner/name"),
    (["data_source=huggingface", "hf_repo_id=acme/digits", "hf_revision=main"],
     "hf_revision", "'main'", "40 hex digits"),
    (["data_source=url", "data_url=https://example.org/d.csv"], "data_sha256", "no value", "64 hex"),
    (["data_source=url", "data_url=https://example.org/d.csv", "data_sha256=abc"],
     "data_sha256", "'abc'", "64 hex digits"),
    (["data_source=url", "data_url=ftp://example.org/d.csv", "data_sha256=" + "a" * 64],
     "data_url", "'ftp://example.org/d.csv'", "https://"),
    (["data_source=git", "git_url=not a url", f"git_commit={SHA}"], "git_url", "'not a url'", "git://"),
    (["data_source=git", "git_url=https://example.org/r.git", "git_commit=HEAD"],
     "git_commit", "'HEAD'", "40 hex digits"),
    (["seed=-1"], "seed", "'-1'", "0 to 4294967295"),
    (["seed=abc"], "seed", "'abc'", "whole number"),
    (["node_type=gpu_foo"], "node_type", "'gpu_foo'", "gpu_rtx_6000"),
    (["chameleon_site=KVM@TACC", "node_type=gpu_rtx_6000"], "node_type", "'gpu_rtx_6000'",
     "not offered at chameleon_site KVM@TACC; accepted: g1.h100.pci.1, m1.xlarge, m1.large"),
    (["chameleon_site=CHI@UC", "node_type=m1.large"], "node_type", "'m1.large'",
     "not offered at chameleon_site CHI@UC; accepted: gpu_rtx_6000"),
    (["license=GPL-3.0"], "license", "'GPL-3.0'", "accepted: MIT, Apache-2.0, BSD-3-Clause"),
    (["copyright_year=20"], "copyright_year", "'20'", "a year"),
    (["chameleon_site=CHI@Mars"], "chameleon_site", "'CHI@Mars'", "CHI@TACC"),
]


@pytest.mark.parametrize(("answers", "field", "value", "accepted"), CASES)
def test_bad_answer_is_one_clear_line(
    tmp_path: Path, env: dict[str, str], answers: list[str], field: str, value: str, accepted: str
) -> None:
    args = ["new", str(tmp_path / "p"), "--defaults"]
    for answer in answers:
        args += ["--data", answer]
    proc = reprostack(args, env, check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"reprostack: error: {field}: ")
    assert value in errors[0] and accepted in errors[0]
    assert "Traceback" not in proc.stderr
    # Nothing half-written: no project, no staging folder, no remote.
    assert [p.name for p in tmp_path.iterdir() if p.name != "hf-home"] == []


def test_existing_non_empty_dir_needs_force(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "p"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    proc = reprostack(["new", str(target), "--defaults"], env, check=False)
    assert proc.returncode == 2
    assert "DIR:" in proc.stderr and "--force" in proc.stderr
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_force_replaces_only_after_success(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "p"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    bad = reprostack(["new", str(target), "--defaults", "--force", "--data", "framework=jax"],
                     env, check=False)
    assert bad.returncode == 2
    assert (target / "notes.txt").exists(), "a failed --force run must not touch DIR"
    reprostack(["new", str(target), "--defaults", "--force"], env)
    assert not (target / "notes.txt").exists()
    assert (target / "config" / "config.yaml").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_answers_file(tmp_path: Path, env: dict[str, str]) -> None:
    answers = tmp_path / "answers.yml"
    answers.write_text("- just\n- a list\n")
    proc = reprostack(["new", str(tmp_path / "p"), "--answers", str(answers)], env, check=False)
    assert proc.returncode == 2
    assert "--answers" in proc.stderr and str(answers) in proc.stderr


def test_help_explains_itself(env: dict[str, str]) -> None:
    top = reprostack(["--help"], env).stdout
    assert "new" in top and "Snakemake" in top
    new = reprostack(["new", "--help"], env).stdout
    for option in ("--defaults", "--data", "--answers", "--force", "--dvc-remote"):
        assert option in new


def test_generation_accepts_what_provisioning_accepts() -> None:
    """copier.yml validates node types when the project is made; chameleon.py again before
    provisioning. The two lists must be the same, site by site."""
    import re
    import sys

    import yaml
    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    from chameleon import FLAVORS, NODE_TYPES, SITES

    choices = yaml.safe_load((ROOT / "copier.yml").read_text())["node_type"]["choices"]
    lists = {name: re.findall(r"'([^']+)':", body) for name, body in
             re.findall(r"set (\w+) = \{([^}]*)\}", choices)}
    assert lists == {"bare_metal": list(NODE_TYPES), "flavors": list(FLAVORS)}
    choices = yaml.safe_load((ROOT / "copier.yml").read_text())["chameleon_site"]["choices"]
    assert choices == list(SITES)
