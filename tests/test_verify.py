"""The reviewer's check: clone, pull, reuse or recompute, verify; and what a mismatch says."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import Project, generate, planned, run

pytestmark = pytest.mark.slow




def published(tmp: Path, env: dict[str, str]) -> Project:
    """An author's project: run, publish the reference, commit, push."""
    author = generate(tmp, "paper", env, "framework=sklearn")
    first = author.snakemake()
    assert "no reference results yet" in first.stderr
    assert author.json("results/verify.json")["status"] == "no-reference"
    author.run("python", "workflow/scripts/publish_reference.py")
    for name in ("metrics.json", "history.json", "dvc.lock", "provenance.json"):
        assert (author.path / "reference" / name).is_file()
    author.run("git", "add", "-A")
    author.run("git", "commit", "-qm", "Reference results")
    assert author.run("git", "status", "--porcelain").stdout == ""
    author.dvc("push")
    return author


def clone(author: Project, name: str) -> Project:
    target = author.path.parent / name
    run(["git", "clone", "-q", str(author.path), str(target)], author.path.parent, author.env)
    return Project(target, author.env)


def test_fresh_clone_reuses_then_recomputes_and_verifies(tmp_path: Path, env: dict[str, str]) -> None:
    author = published(tmp_path, env)
    reviewer = clone(author, "review")
    pulled = reviewer.run("python", "workflow/scripts/pull.py")
    assert "verify: changed: will rerun" in pulled.stdout
    # dvc pull set every file to 'now'; the mtimes were aligned with DVC's hashes: only verify runs.
    assert planned(reviewer) == {"verify"}
    reuse = reviewer.snakemake()
    assert "verify: reproduced" in reuse.stdout + reuse.stderr
    assert reviewer.json("results/verify.json")["status"] == "ok"
    assert "up to date" in reviewer.dvc("status").stdout

    recompute = reviewer.snakemake("--forceall")
    assert "verify: reproduced" in recompute.stdout + recompute.stderr
    result = reviewer.json("results/verify.json")
    assert result["status"] == "ok" and result["model_identical"] is True
    assert all(row["ok"] and row["expected"] == row["found"] for row in result["metrics"])
    report = (reviewer.path / "results/report.md").read_text()
    assert "Reproduction report: VERIFIED" in report and "| accuracy |" in report
    assert (reviewer.path / "results/curves.png").read_bytes()[:4] == b"\x89PNG"
    # The rerun's MLflow run links to the report.
    run_id = reviewer.json("results/run.json")["run_id"]
    tags = dict(reviewer.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    assert tags["verify.status"] == "ok" and tags["reproduction.report"] == "reproduction/report.md"

    # The same flow with DVC: a fresh clone, pull, repro runs only verify.
    second = clone(author, "review-dvc")
    second.dvc("pull")
    repro = second.dvc("repro")
    assert re.findall(r"Running stage '(\w+)'", repro.stdout) == ["verify"]

    html = reviewer.snakemake("--report", "results/report.html")
    assert html.returncode == 0
    assert "Reproduction" in (reviewer.path / "results/report.html").read_text()


def test_without_the_remote_the_reviewer_recomputes(tmp_path: Path, env: dict[str, str]) -> None:
    author = published(tmp_path, env)
    shutil.move(tmp_path / "paper-dvc-remote", tmp_path / "gone")
    reviewer = clone(author, "review")
    failed = reviewer.run("python", "workflow/scripts/pull.py", check=False)
    assert failed.returncode != 0
    assert "unreachable" in failed.stderr and "snakemake --cores all --forceall" in failed.stderr
    reviewer.snakemake("--forceall")
    assert reviewer.json("results/verify.json")["status"] == "ok"


def test_each_kind_of_change_is_named(tmp_path: Path, env: dict[str, str]) -> None:
    author = published(tmp_path, env)

    def verify_fails(project: Project) -> str:
        proc = project.snakemake(check=False)
        assert proc.returncode != 0
        message = proc.stderr
        assert "verify: results differ from the reference" in message
        assert re.search(r"metric accuracy: expected [\d.]+, found [\d.]+, tolerance 0\.0", message)
        return message

    # A parameter.
    params = clone(author, "param")
    params.run("python", "workflow/scripts/pull.py")
    params.set_config("train.epochs", 2)
    assert "differs: parameter train.epochs: reference 30, now 2" in verify_fails(params)

    # A data file, edited in place in a working copy that Snakemake has seen.
    data = clone(author, "data")
    data.run("python", "workflow/scripts/pull.py")
    data.snakemake()
    table = data.path / "data/raw/digits.csv"
    rows = table.read_text().splitlines()
    rows[1:41] = [re.sub(r",\d+$", ",0", row) for row in rows[1:41]]  # relabel 40 samples
    table.write_text("\n".join(rows) + "\n")
    message = verify_fails(data)
    assert re.search(r"differs: data data/raw/digits.csv: sha256 reference [0-9a-f]{64}, now [0-9a-f]{64}",
                     message)

    # A line of training code.
    code = clone(author, "code")
    code.run("python", "workflow/scripts/pull.py")
    model = code.path / "src/digits_repro/model.py"
    model.write_text(model.read_text().replace('loss="log_loss"', 'loss="modified_huber"'))
    reference_commit = author.json("reference/provenance.json")["commit"]
    message = verify_fails(code)
    assert f"code: changed since reference commit {reference_commit[:12]}" in message
    assert "src/digits_repro/model.py" in message and "dirty" in message


def test_gpu_tolerance_applies_only_to_gpu_runs(tmp_path: Path, env: dict[str, str]) -> None:
    import sys

    project = generate(tmp_path, "p", env, "framework=sklearn")
    sys.path.insert(0, str(project.path / "src"))
    try:
        from digits_repro import verify
    finally:
        sys.path.pop(0)
    config = project.config
    assert verify._tolerances(config, gpu=False) == {}
    assert verify._tolerances(config, gpu=True)["accuracy"] == 0.01
