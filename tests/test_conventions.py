"""Snakemake and DVC conventions in every generated combination: `snakemake --lint` is clean, every
rule has the `log:` its step writes, report items carry captions, the history plot is declared
once, models are DVC artifacts. Render only: nothing runs."""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import Project, generate, make_env

SHA = "0123456789abcdef0123456789abcdef01234567"
SOURCES = {
    "sample": [],
    "huggingface": ["data_source=huggingface", "hf_repo_id=acme/d", f"hf_revision={SHA}"],
    "git": ["data_source=git", "git_url=https://example.org/d.git", f"git_commit={SHA}"],
    "url": ["data_source=url", "data_url=https://example.org/d.csv", "data_sha256=" + "a" * 64],
}
COMBINATIONS = list(itertools.product(["sklearn", "pytorch"], SOURCES))
TOLERATED: set[tuple[str, str]] = set()  # (snakefile, lint title) pairs let through: none


def lints(project: Project) -> list[tuple[str, str, str]]:
    """(rule, snakefile relative to the project, lint title) for every lint Snakemake reports."""
    proc = project.run("snakemake", "--lint", check=False)
    found, rule = [], None
    for line in (proc.stdout + proc.stderr).splitlines():
        head = re.match(r"Lints for (?:rule (\w+) \(line \d+, (.+)\)|snakefile (.+)):$", line)
        if head:
            name, path = (head.group(1), head.group(2)) if head.group(1) else ("(snakefile)", head.group(3))
            rule = (name, Path(path).resolve().relative_to(project.path.resolve()).as_posix())
            continue
        item = re.match(r"    \* (.+?):?$", line)
        if item and rule:
            found.append((*rule, item.group(1)))
    assert proc.returncode == 0 or found, proc.stderr
    return found


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Project]:
    tmp = tmp_path_factory.mktemp("conventions")
    env = make_env(tmp)
    return {(framework, source): generate(tmp, f"{framework}-{source}", env, f"framework={framework}",
                                          *SOURCES[source])
            for framework, source in COMBINATIONS}


@pytest.mark.parametrize(("framework", "source"), COMBINATIONS)
def test_lint_is_clean(projects: dict[tuple[str, str], Project], framework: str, source: str) -> None:
    project = projects[framework, source]
    left = [lint for lint in lints(project) if (lint[1], lint[2]) not in TOLERATED]
    assert left == [], left


def test_every_rule_logs_where_its_step_writes(projects: dict[tuple[str, str], Project]) -> None:
    project = projects["sklearn", "sample"]
    check = project.run(sys.executable, "workflow/scripts/check_pipeline.py")
    assert "agree" in check.stdout
    rules = (project.path / "workflow" / "rules")
    for smk in rules.glob("*.smk"):  # the testbed rules too: chameleon.py and remote.py write them
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)+)", smk.read_text(), re.M):
            assert f'log:\n        "logs/{name}.log"' in body, f"{smk.name}: rule {name} has no log"
    ignored = (project.path / ".gitignore").read_text().splitlines()
    assert "/logs/" in ignored and "/dvc_plots/" in ignored


def test_check_pipeline_names_a_wrong_or_missing_log(projects: dict[tuple[str, str], Project]) -> None:
    project = projects["sklearn", "git"]
    rules = project.path / "workflow" / "rules" / "train.smk"
    original = rules.read_text()
    try:
        rules.write_text(original.replace('"logs/train.log"', '"logs/training.log"'))
        proc = project.run(sys.executable, "workflow/scripts/check_pipeline.py", check=False)
        assert proc.returncode == 1
        assert ("check_pipeline: rule 'train': log ['logs/training.log'], but its step writes "
                "logs/train.log") in proc.stderr
    finally:
        rules.write_text(original)


def test_report_items_have_captions(projects: dict[tuple[str, str], Project]) -> None:
    project = projects["pytorch", "sample"]
    verify = (project.path / "workflow" / "rules" / "verify.smk").read_text()
    items = re.findall(r"report\((.*?)\)", verify, re.S)
    assert len(items) == 2
    for item in items:
        caption = re.search(r'caption="([^"]+)"', item)
        assert caption, item
        assert (project.path / "workflow" / "rules" / caption.group(1)).resolve().read_text().strip()


@pytest.mark.parametrize("framework", ["sklearn", "pytorch"])
def test_dvc_plots_once_and_model_artifact(projects: dict[tuple[str, str], Project], framework: str) -> None:
    project = projects[framework, "sample"]
    pipeline = yaml.safe_load((project.path / "dvc.yaml").read_text())
    declared = [next(iter(p)) for p in pipeline["plots"]]
    declared += [next(iter(p)) if isinstance(p, dict) else p
                 for stage in pipeline["stages"].values() for p in stage.get("plots") or []]
    assert declared == ["results/history.json"]
    assert pipeline["plots"][0]["results/history.json"]["x"] == "epoch"
    assert pipeline["artifacts"]["model"]["path"] == "models"
    assert pipeline["artifacts"]["model"]["type"] == "model"
    # DVC itself reads both sections.
    read = project.run(sys.executable, "-c", "from dvc.repo import Repo; r = Repo('.'); "
                       "a = r.artifacts.read()['dvc.yaml']['model']; print(a.path, a.type); "
                       "print(sorted(next(r.plots.collect())['workspace']['definitions']['data']['dvc.yaml']['data']))")
    assert read.stdout.splitlines() == ["models model", "['results/history.json']"], read.stdout
