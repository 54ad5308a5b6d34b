"""Faults an operator meets, each caused for real and followed by the rerun once it is fixed.

A failed or killed step keeps the last good output (nothing is deleted before a step replaces it),
and the next run redoes exactly what is stale: never "Nothing to be done" over old results.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, generate
from loopback import free_port

pytestmark = pytest.mark.slow

KEPT = ("data/raw/digits.csv", "data/prepared/x_test.npy", "models/model.joblib")


def digests(project: Project) -> dict[str, str]:
    return {p: hashlib.sha256((project.path / p).read_bytes()).hexdigest() for p in KEPT}


def kill_when_started(project: Project, script: str) -> subprocess.CompletedProcess[str]:
    """`snakemake --cores all`, with the step's process SIGKILLed as soon as it exists (as the
    kernel's OOM killer would)."""
    proc = subprocess.Popen(["snakemake", "--cores", "all"], cwd=project.path, env=project.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wanted = f"workflow/scripts/{script}".encode()
    killed = False
    deadline = time.monotonic() + 120
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[1] == wanted:
                os.kill(int(entry.name), signal.SIGKILL)
                killed = True
                break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    assert killed, f"{script} never started:\n{err[-2000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_failed_and_killed_steps_keep_the_last_good_output_and_rerun(tmp_path: Path, env: dict[str, str]
                                                                     ) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    project.snakemake()
    good = digests(project)

    # The data source unreachable: one line, and the last good data/raw stays.
    project.set_config("data", {"source": "huggingface", "repo_id": "owner/table", "file": "table.csv",
                                "revision": "0" * 40, "target": "label"})
    hub_down = Project(project.path, {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    failed = hub_down.snakemake(check=False)
    assert failed.returncode != 0
    assert "Hugging Face Hub at http://127.0.0.1:" in failed.stderr and "unreachable" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert digests(project) == good
    project.run("git", "checkout", "config/config.yaml")

    # The prepare step killed mid-run (its only output is the one it keeps): the old split stays,
    # and the rerun with the same config redoes it instead of calling it up to date.
    project.set_config("prepare.test_size", 0.3)
    killed = kill_when_started(project, "prepare.py")
    assert killed.returncode != 0
    assert digests(project) == good
    rerun = project.snakemake()
    assert "did not finish last time" in rerun.stderr
    assert np.load(project.path / "data" / "prepared" / "x_test.npy").shape[0] == 540
    assert project.json("results/metrics.json")["n_test"] == 540
    assert "Nothing to be done" in project.snakemake().stderr
    assert "up to date" in project.dvc("status").stdout

    # The same with DVC as the front end: the tracking server down at train; models kept, and
    # dvc.lock still says train is stale until a run succeeds.
    trained = digests(project)["models/model.joblib"]
    project.set_config("model.epochs", 4)
    project.set_config("tracking.mode", "server")
    project.set_config("tracking.server_uri", f"http://127.0.0.1:{free_port()}")
    failed = project.dvc("repro", check=False)
    assert failed.returncode != 0 and "is unreachable" in failed.stderr + failed.stdout
    assert digests(project)["models/model.joblib"] == trained
    assert "train" in project.dvc("status").stdout
    project.set_config("tracking.mode", "local")
    project.dvc("repro")
    assert len(project.json("results/history.json")) == 4
    assert digests(project)["models/model.joblib"] != trained

    # `dvc commit` failing after a successful Snakemake run is said, remembered and retried.
    cache = project.path / ".dvc" / "cache"
    cache.rename(cache.with_name("cache.aside"))
    cache.write_text("not a folder\n")
    project.set_config("verify.tolerance", {"accuracy": 0.5})
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    assert "dvc commit of" in failed.stderr and "retries the commit" in failed.stderr
    cache.unlink()
    cache.with_name("cache.aside").rename(cache)
    assert "verify" in project.dvc("status").stdout  # dvc.lock does not have the run yet
    retried = project.snakemake()
    assert "retrying the dvc commit" in retried.stderr
    assert "up to date" in project.dvc("status").stdout
    shutil.rmtree(project.path / ".snakemake" / "reprostack", ignore_errors=True)
    assert "Nothing to be done" in project.snakemake().stderr
