"""The reviewer's check: clone, recompute, verify; and what a mismatch says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Project, generate, planned, run

pytestmark = pytest.mark.slow




def published(tmp: Path, env: dict[str, str]) -> Project:
    """An author's project: run, then `snakemake -c1 publish` (reference, push, commit)."""
    author = generate(tmp, "paper", env, "framework=sklearn")
    first = author.snakemake()
    assert "no reference results in this commit" in first.stderr
    assert author.json("results/verify.json")["status"] == "no-reference"
    proc = author.snakemake("publish")
    assert "publish: data and models pushed to the DVC remote 'local'" in proc.stdout
    for name in ("metrics.json", "history.json", "dvc.lock", "provenance.json"):
        assert name in author.run("git", "ls-files", "reference").stdout
    assert author.run("git", "status", "--porcelain").stdout == ""
    # Publishing left the pipeline up to date: nothing to rerun, dvc.lock as committed.
    assert planned(author) == set()
    assert "up to date" in author.dvc("status").stdout
    return author


def clone(author: Project, name: str) -> Project:
    target = author.path.parent / name
    run(["git", "clone", "-q", str(author.path), str(target)], author.path.parent, author.env)
    return Project(target, author.env)


def test_fresh_clone_recomputes_and_verifies(tmp_path: Path, env: dict[str, str]) -> None:
    author = published(tmp_path, env)
    reviewer = clone(author, "review")
    # Nothing of the author's run is in git but the reference: everything is recomputed.
    assert not (reviewer.path / "results").exists()
    assert planned(reviewer) >= {"environment", "data", "prepare", "train", "evaluate", "track", "verify"}
    proc = reviewer.snakemake()
    output = proc.stdout + proc.stderr
    assert "data: no DVC remote here; fetching from the pinned source" in output
    assert "verify: reproduced" in output
    result = reviewer.json("results/verify.json")
    assert result["status"] == "ok" and result["model_identical"] is True
    assert all(row["ok"] and row["expected"] == row["found"] for row in result["metrics"])
    report = (reviewer.path / "results/report.md").read_text()
    assert "Reproduction report: VERIFIED" in report and "| accuracy |" in report
    assert (reviewer.path / "results/curves.png").read_bytes()[:4] == b"\x89PNG"
    # The reviewer's MLflow run links to the report.
    run_id = reviewer.json("results/run.json")["run_id"]
    tags = dict(reviewer.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    assert tags["verify.status"] == "ok" and tags["reproduction.report"] == "reproduction/report.md"
    assert tags["environment.workdir"] == str(reviewer.path)

    html = reviewer.snakemake("--report", "results/report.html")
    assert html.returncode == 0
    assert "Reproduction" in (reviewer.path / "results/report.html").read_text()


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
    params.set_config("model.epochs", 2)
    assert "differs: parameter model.epochs: reference 30, now 2" in verify_fails(params)
    # Fixed, the rerun redoes what is stale and passes.
    params.run("git", "checkout", "--", "config/config.yaml")
    params.snakemake()
    assert params.json("results/verify.json")["status"] == "ok"
    # A reference committed in part is named, not half-compared.
    (params.path / "reference" / "provenance.json").unlink()
    partial = params.snakemake(check=False)
    assert partial.returncode != 0
    assert "reference/provenance.json is missing from this commit" in partial.stderr
    params.run("git", "checkout", "--", "reference")
    assert planned(params) == {"verify"}
    params.snakemake()

    # A data file, edited in place in a working copy that Snakemake has seen.
    data = clone(author, "data")
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
    model = code.path / "src/digits_repro/model.py"
    model.write_text(model.read_text().replace('loss="log_loss"', 'loss="modified_huber"'))
    reference_commit = author.json("reference/provenance.json")["commit"]
    message = verify_fails(code)
    assert (f"differs: code src/digits_repro/model.py: changed since the reference (reference commit "
            f"{reference_commit[:12]}, now ") in message
    assert "dirty" in message


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
