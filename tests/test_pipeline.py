"""End to end: generate projects and run both front ends, asserting on what they leave behind."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
from conftest import Project, generate, planned, run, table_csv
from loopback import FakeHub, git_daemon, hf_hub, https_files, self_signed_cert

pytestmark = pytest.mark.slow
STAGES = {"environment", "image", "data", "prepare", "train", "evaluate", "track", "verify"}




def dvc_ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


def artifacts(project: Project, run_id: str) -> Path:
    (uri,) = project.sql("SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)[0]
    return Path(urlparse(uri).path)


def assert_run_recorded(project: Project, front_end: str) -> str:
    """The MLflow run for the last pipeline run holds params, metrics, model and provenance."""
    run_id = project.json("results/run.json")["run_id"]
    config, metrics = project.config, project.json("results/metrics.json")
    assert project.sql("SELECT status FROM runs WHERE run_uuid = ?", run_id) == [("FINISHED",)]
    tags = dict(project.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    head = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert tags["git.commit"] == head == tags["mlflow.source.git.commit"]
    assert tags["git.dirty"] == "false"
    assert tags["front_end"] == front_end and front_end in tags["command_line"]
    assert tags["seed"] == str(config["seed"])
    assert tags["data.sha256"] == project.json("results/data.json")["sha256"]
    assert tags["hardware.cpu"] and tags["hardware.os"] and tags["hardware.gpu"] == "none"
    assert tags["train.device"] == "cpu"
    for tool in ("snakemake", "dvc", "mlflow"):
        assert re.fullmatch(r"\d+\.\d+.*", tags[f"version.{tool}"])
    params = dict(project.sql("SELECT key, value FROM params WHERE run_uuid = ?", run_id))
    assert params["seed"] == str(config["seed"])
    assert params["model.epochs"] == str(config["model"]["epochs"])
    assert params["data.source"] == config["data"]["source"]
    assert not any("uri" in key for key in params), "tracking URIs may hold credentials"
    latest = dict(project.sql("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", run_id))
    for key, value in metrics.items():
        assert latest[key] == pytest.approx(value, rel=0, abs=0)
    steps = project.sql(
        "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'epoch_loss' ORDER BY step", run_id
    )
    assert [s for (s,) in steps] == list(range(1, config["model"]["epochs"] + 1))
    inputs = dict(project.sql(
        "SELECT d.name, d.digest FROM inputs i JOIN datasets d ON i.source_id = d.dataset_uuid"
        " WHERE i.destination_id = ?", run_id))
    assert set(inputs) == {"raw", "train", "test"}
    assert inputs["raw"] == project.json("results/data.json")["sha256"][:32]
    for part in ("train", "test"):  # the split's content: its two files' sha256, as data.json names raw's
        files = {name: hashlib.sha256((project.path / "data" / "prepared" / name).read_bytes()).hexdigest()
                 for name in (f"x_{part}.npy", f"y_{part}.npy")}
        assert inputs[part] == hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]
    provenance = artifacts(project, run_id) / "provenance"
    for name in ("git.diff", "pip-freeze.txt", "environment.json", "data.json", "metrics.json",
                 "history.json", "config.yaml", "requirements.lock", "run.json", "training.json"):
        assert (provenance / name).is_file(), name
    assert "mlflow==" in (provenance / "pip-freeze.txt").read_text()
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project.path / 'mlruns.db'}")
    (experiment,) = project.sql("SELECT experiment_id FROM runs WHERE run_uuid = ?", run_id)
    models = client.search_logged_models(experiment_ids=[str(experiment[0])])
    assert [m.status for m in models if m.source_run_id == run_id] == [LoggedModelStatus.READY]
    return run_id


def assert_versioned_by_dvc(project: Project) -> None:
    status = project.dvc("status").stdout
    assert "up to date" in status, status
    lock = project.path / "dvc.lock"
    assert lock.exists() and set(re.findall(r"^  (\w+):$", lock.read_text(), re.M)) == STAGES


def both_front_ends(tmp: Path, env: dict[str, str], *answers: str) -> tuple[Project, Project]:
    """Two fresh copies of one project: Snakemake runs one, DVC the other; same metrics."""
    smk = generate(tmp, "smk", env, *answers)
    dvc = generate(tmp, "dvc", env, *answers)
    smk.snakemake()
    dvc.dvc("repro")
    assert smk.json("results/metrics.json") == dvc.json("results/metrics.json")
    # Same bytes, not only the same metrics: the model files are bitwise identical.
    models = [p for p in (smk.path / "models").iterdir() if p.name != ".snakemake_timestamp"]
    assert len(models) == 2  # the model and training.json
    for model in models:
        assert model.read_bytes() == (dvc.path / "models" / model.name).read_bytes(), model.name
    assert_run_recorded(smk, "snakemake")
    assert_run_recorded(dvc, "dvc")
    assert_versioned_by_dvc(smk)
    assert_versioned_by_dvc(dvc)
    return smk, dvc


def test_pytorch_sample_both_front_ends_rerun_only_what_changed(
    tmp_path: Path, env: dict[str, str]
) -> None:
    smk, dvc = both_front_ends(tmp_path, env)
    metrics = smk.json("results/metrics.json")
    assert metrics["accuracy"] > 0.9 and metrics["n_test"] == 450

    # Nothing changed: nothing runs, with either front end.
    assert planned(smk) == set()
    assert "Nothing to be done" in smk.snakemake().stderr
    again = dvc.dvc("repro")
    assert dvc_ran(again.stdout) == set() and "Data and pipelines are up to date" in again.stdout
    runs_before = smk.sql("SELECT COUNT(*) FROM runs")[0][0]

    # One value changed: only the steps that read it (and what depends on their outputs) rerun.
    smk.set_config("model.epochs", 3)
    assert planned(smk) == {"train", "evaluate", "track", "verify"}
    smk.snakemake()
    assert smk.sql("SELECT COUNT(*) FROM runs")[0][0] == runs_before + 1
    assert len(smk.json("results/history.json")) == 3
    dvc.set_config("prepare.test_size", 0.3)
    assert dvc_ran(dvc.dvc("repro").stdout) == {"prepare", "train", "evaluate", "track", "verify"}
    assert dvc.json("results/metrics.json")["n_test"] == 540
    assert_versioned_by_dvc(smk)

    # The DVC remote needs no server: push and read back from the folder beside the project.
    smk.dvc("push")
    assert any((tmp_path / "smk-dvc-remote").rglob("*"))


def test_sklearn_url_source_over_https(tmp_path: Path, env: dict[str, str]) -> None:
    served = tmp_path / "served"
    served.mkdir()
    table = table_csv()
    (served / "table.csv").write_bytes(table)
    cert, key = self_signed_cert(tmp_path)
    env["REQUESTS_CA_BUNDLE"] = str(cert)
    with https_files(served, cert, key) as base:
        smk, _ = both_front_ends(
            tmp_path, env, "framework=sklearn", "data_source=url", f"data_url={base}/table.csv",
            f"data_sha256={hashlib.sha256(table).hexdigest()}", "data_target=species",
        )
        assert (smk.path / "data/raw/table.csv").read_bytes() == table
        assert smk.json("results/data.json")["files"] == {"table.csv": hashlib.sha256(table).hexdigest()}
        assert smk.json("results/metrics.json")["accuracy"] > 0.8

        # The server now serves other bytes: the pinned checksum refuses them. Both front ends
        # clear a step's outputs before running it; the last good data is in DVC's cache.
        (served / "table.csv").write_bytes(table + b"1,2,3,4,5,a\n")
        smk.set_config("data.url", f"{base}/table.csv?v=2")
        failed = smk.snakemake(check=False)
        assert failed.returncode != 0
        assert "data.sha256" in failed.stderr and hashlib.sha256(table).hexdigest() in failed.stderr
        smk.dvc("checkout", "data/raw")
        assert (smk.path / "data/raw/table.csv").read_bytes() == table


def test_pytorch_huggingface_source(tmp_path: Path, env: dict[str, str]) -> None:
    hub = FakeHub()
    table = table_csv(seed=1)
    commit = hub.add("acme/species", {"data/train.csv": table})
    with hf_hub(hub) as endpoint:
        env["HF_ENDPOINT"] = endpoint
        smk, _ = both_front_ends(
            tmp_path, env, "data_source=huggingface", "hf_repo_id=acme/species",
            f"hf_revision={commit}", "data_file=data/train.csv", "data_target=species",
        )
        assert any(f"/datasets/acme/species/resolve/{commit}/data/train.csv" in r for r in hub.requests)
        assert (smk.path / "data/raw/data/train.csv").read_bytes() == table
        pin = smk.json("results/data.json")["pin"]
        assert pin == {"repo_id": "acme/species", "revision": commit, "file": "data/train.csv"}

        # A revision the hub does not have: a clear error naming it.
        smk.set_config("data.revision", "f" * 40)
        failed = smk.snakemake(check=False)
        assert failed.returncode != 0 and "f" * 40 in failed.stderr and "acme/species" in failed.stderr


def test_sklearn_git_source_holds_its_pin(tmp_path: Path, env: dict[str, str]) -> None:
    base = tmp_path / "git"
    repo = base / "species.git"
    repo.mkdir(parents=True)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    first = table_csv(seed=2)
    (repo / "table.csv").write_bytes(first)
    run(["git", "add", "table.csv"], repo, env)
    run(["git", "commit", "-qm", "v1"], repo, env)
    pinned = run(["git", "rev-parse", "HEAD"], repo, env).stdout.strip()
    (repo / "table.csv").write_bytes(table_csv(seed=3))
    run(["git", "commit", "-qam", "v2"], repo, env)
    with git_daemon(base) as url:
        smk, _ = both_front_ends(
            tmp_path, env, "framework=sklearn", "data_source=git", f"git_url={url}/species.git",
            f"git_commit={pinned}", "data_file=table.csv", "data_target=species",
        )
    assert (smk.path / "data/raw/table.csv").read_bytes() == first, "the pin, not the branch tip"
    assert smk.json("results/data.json")["pin"]["commit"] == pinned


def test_environment_check_fails_before_training(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    lock = project.path / "requirements.lock"
    lock.write_text(re.sub(r"^pyyaml==\S+", "pyyaml==0.0.1", lock.read_text(), flags=re.M))
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    assert "'pyyaml' is pinned to 0.0.1 but" in failed.stderr
    assert not (project.path / "results/history.json").exists(), "train must not have run"


def test_bad_config_value_is_named_by_both_front_ends(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    project.set_config("model.epochs", 0)
    smk = project.snakemake(check=False)
    assert smk.returncode != 0 and "epochs" in smk.stderr + smk.stdout
    dvc = project.dvc("repro", check=False)
    assert dvc.returncode != 0
    assert "config/config.yaml: model.epochs: 0 is less than the minimum of 1" in dvc.stderr + dvc.stdout


def test_code_change_is_recorded_as_dirty_with_its_diff(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    project.snakemake()
    model = project.path / "src/digits_repro/model.py"
    model.write_text(model.read_text() + "\n# tuned by hand\n")
    assert planned(project) == {"train", "evaluate", "track", "verify"}
    project.snakemake()
    run_id = project.json("results/run.json")["run_id"]
    tags = dict(project.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    assert tags["git.dirty"] == "true"
    diff = (artifacts(project, run_id) / "provenance/git.diff").read_text()
    assert "+# tuned by hand" in diff and "results/" not in diff


def test_generated_project_tests_pass(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env)
    proc = project.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\d+ passed", proc.stdout)


@pytest.mark.gpu
def test_cuda_bf16_path_is_recorded(tmp_path: Path, env: dict[str, str]) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    project = generate(tmp_path, "p", env)
    project.snakemake()
    run_id = project.json("results/run.json")["run_id"]
    tags = dict(project.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    assert tags["train.device"] == "cuda" and tags["train.precision"] == "bf16-autocast"
    assert tags["hardware.gpu"] != "none"
    assert subprocess.run(["nvidia-smi"], capture_output=True).returncode == 0
