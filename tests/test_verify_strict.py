"""verify.strict, reference edits and dvc.lock after publishing, on one published sklearn project."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import Project, generate, make_env, planned

pytestmark = pytest.mark.slow

LOOSE = {"accuracy": 1.0, "f1_macro": 1.0, "log_loss": 100.0}  # every metric "agrees"


@pytest.fixture(scope="module")
def author(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """Run, then `snakemake -c1 publish`: the reference is committed."""
    tmp = tmp_path_factory.mktemp("strict")
    project = generate(tmp, "paper", make_env(tmp), "framework=sklearn")
    project.snakemake()
    project.snakemake("publish")
    assert project.run("git", "status", "--porcelain").stdout == ""
    return project


def epochs_key(project: Project) -> str:
    return "model.epochs" if "epochs" in (project.config.get("model") or {}) else "train.epochs"


def test_publish_leaves_dvc_lock_as_committed(author: Project) -> None:
    # The next run by either front end changes nothing, dvc.lock included.
    assert planned(author) == set()
    author.snakemake()
    repro = author.dvc("repro")
    assert "Running stage" not in repro.stdout
    assert author.run("git", "status", "--porcelain", "dvc.lock", "reference").stdout == ""
    assert (author.path / "logs" / "verify.log").is_file()


def test_strict_names_a_parameter_when_metrics_agree(author: Project, tmp_path: Path) -> None:
    project = author.copy_to(tmp_path / "param")
    key = epochs_key(project)
    project.set_config(key, 29)
    project.set_config("verify.tolerance", LOOSE)
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    assert "verify: every metric agrees, but the run's parameters, data or code differ" in failed.stderr
    assert f"  differs: parameter {key}: reference 30, now 29" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert "differs: parameter" in (project.path / "logs" / "verify.log").read_text()

    # strict off: the metrics alone decide; the difference is still reported.
    project.set_config("verify.strict", False)
    passed = project.snakemake()
    assert "verify: reproduced" in passed.stdout
    assert "verify.strict is off, so 1 difference(s)" in passed.stderr
    result = project.json("results/verify.json")
    assert result["status"] == "ok" and result["strict"] is False
    assert result["input_differences"] == [f"parameter {key}: reference 30, now 29"]
    assert "`verify.strict` is off" in (project.path / "results" / "report.md").read_text()


def test_strict_names_data_and_code(author: Project, tmp_path: Path) -> None:
    project = author.copy_to(tmp_path / "data")
    project.set_config("verify.tolerance", LOOSE)
    table = project.path / "data" / "raw" / "digits.csv"
    rows = table.read_text().splitlines()
    rows[1:11] = [re.sub(r",\d+$", ",0", row) for row in rows[1:11]]  # relabel 10 samples
    table.write_text("\n".join(rows) + "\n")
    model = project.path / "src" / "digits_repro" / "model.py"
    model.write_text(model.read_text() + "\n# a comment is a change of code\n")
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    message = failed.stderr
    assert re.search(r"differs: data data/raw/digits\.csv: sha256 reference [0-9a-f]{64}, now [0-9a-f]{64}",
                     message)
    assert re.search(r"differs: data data/prepared/\S+: sha256 reference", message)
    assert re.search(r"differs: code src/digits_repro/model\.py: changed since the reference "
                     r"\(reference commit [0-9a-f]{12}, now [0-9a-f]{12}, dirty\)", message)
    assert "differs: parameter" not in message


def test_reference_edit_reruns_verify(author: Project, tmp_path: Path) -> None:
    project = author.copy_to(tmp_path / "edit")
    metrics = project.path / "reference" / "metrics.json"
    original = metrics.read_text()
    edited = json.dumps({**json.loads(original), "accuracy": 0.5}, indent=2, sort_keys=True) + "\n"
    # Edited in place: replanned by Snakemake, changed for DVC.
    metrics.write_text(edited)
    assert planned(project) == {"verify"}
    assert re.search(r"verify:\s+changed deps:\s+modified:\s+reference", project.dvc("status").stdout)
    project.run("git", "checkout", "--", "reference")

    # Edited keeping the old dates (cp -p, rsync -a, an archive): Snakemake sees it by content too.
    again = author.copy_to(tmp_path / "dated")
    metrics = again.path / "reference" / "metrics.json"
    file_times, folder_times = metrics.stat(), metrics.parent.stat()
    metrics.write_text(edited)
    os.utime(metrics, ns=(file_times.st_atime_ns, file_times.st_mtime_ns))
    os.utime(metrics.parent, ns=(folder_times.st_atime_ns, folder_times.st_mtime_ns))
    assert planned(again) == {"verify"}
    refused = again.snakemake(check=False)
    assert "reference/metrics.json was altered after publishing" in refused.stderr
