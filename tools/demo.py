"""The reference case, in three steps that the root Snakefile and dvc.yaml both call.

generate:  render the example project with default answers into build/example
reproduce: run its pipeline (snakemake --cores all) and publish the results as its reference
           (snakemake -c1 publish commits them), as an author would
check:     clone it into build/review and run `snakemake --cores all` there, as a reviewer would:
           everything is recomputed; fail unless verify passes, the reviewer's MLflow run is
           complete and consistent, and DVC is up to date
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "build" / "example"
REVIEW = ROOT / "build" / "review"
OUT = ROOT / "build" / "demo"
MIN_ACCURACY = 0.9


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _write(name: str, payload: object) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def generate() -> None:
    shutil.rmtree(EXAMPLE.with_name("example-dvc-remote"), ignore_errors=True)
    _run([sys.executable, "-m", "reprostack.cli", "new", str(EXAMPLE), "--defaults", "--force"], ROOT)
    answers = (EXAMPLE / ".copier-answers.yml").read_text()
    _write("generate.json", {"project": str(EXAMPLE.relative_to(ROOT)), "answers": answers})


def reproduce() -> None:
    subprocess.run(["snakemake", "--cores", "all"], cwd=EXAMPLE, check=True)
    subprocess.run(["snakemake", "--cores", "1", "publish"], cwd=EXAMPLE, check=True)
    shutil.copyfile(EXAMPLE / "results" / "metrics.json", OUT / "metrics.json")


def check() -> None:
    shutil.rmtree(REVIEW, ignore_errors=True)
    _run(["git", "clone", "--quiet", str(EXAMPLE), str(REVIEW)], ROOT)
    subprocess.run(["snakemake", "--cores", "all"], cwd=REVIEW, check=True)
    verified = json.loads((REVIEW / "results" / "verify.json").read_text())
    metrics = json.loads((REVIEW / "results" / "metrics.json").read_text())
    run = json.loads((REVIEW / "results" / "run.json").read_text())
    head = _run(["git", "rev-parse", "HEAD"], REVIEW).strip()
    with sqlite3.connect(REVIEW / "mlruns.db") as db:
        logged = dict(db.execute(
            "SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (run["run_id"],)
        ).fetchall())
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run["run_id"],)))
        status = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run["run_id"],)).fetchone()
    problems = []
    if verified["status"] != "ok":
        problems.append(f"verify: {verified['status']}")
    if status != ("FINISHED",):
        problems.append(f"run {run['run_id']} status {status}")
    for key, value in metrics.items():
        if logged.get(key) != value:
            problems.append(f"metric {key}: metrics.json {value}, MLflow {logged.get(key)}")
    if tags.get("git.commit") != head:
        problems.append(f"git.commit tag {tags.get('git.commit')} is not HEAD {head}")
    if metrics["accuracy"] < MIN_ACCURACY:
        problems.append(f"accuracy {metrics['accuracy']} < {MIN_ACCURACY}")
    if tags.get("environment.workdir") != str(REVIEW):
        problems.append(f"environment recorded in {tags.get('environment.workdir')}, not the clone")
    dvc_status = _run(["dvc", "status"], REVIEW)
    if "up to date" not in dvc_status:
        problems.append(f"dvc status: {dvc_status.strip()}")
    if problems:
        sys.exit("demo check failed: " + "; ".join(problems))
    _write("check.json", {"run_id": run["run_id"], "metrics": metrics, "git_commit": head,
                          "front_end": tags.get("front_end"), "dvc_status": "up to date",
                          "verify": verified["status"], "model_identical": verified["model_identical"]})
    print(f"demo: OK, a fresh clone recomputed everything and verified it against the reference: accuracy "
          f"{metrics['accuracy']:.4f}, model files identical: {verified['model_identical']}, "
          f"MLflow run {run['run_id']}")


if __name__ == "__main__":
    {"generate": generate, "reproduce": reproduce, "check": check}[sys.argv[1]]()
