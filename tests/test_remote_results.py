"""Results outlive the node: a run on the (fake) Chameleon node pushes its DVC outputs to the site's
object store (a real authenticated S3 endpoint on loopback, reached with EC2 credentials from the
fake Keystone), exports its MLflow run, and `collect` brings both here; teardown refuses until then.

The node is a local folder driven through the command runner; `docker` there is a stub that runs
what the training container would run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import Project
from fake_chameleon import FakeChameleon
from loopback import free_port
from test_chameleon import on_fake, state

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import stack  # noqa: E402

EC2 = ("ec2-access-7f3a", "ec2-secret-Zq81x")
DOCKER_STUB = """#!/usr/bin/env bash
echo "docker $*" >> "$HOME/../docker-calls.log"
args=("$@")
for i in "${!args[@]}"; do  # `compose ... run --rm train [command]`: what the container runs
  if [ "${args[$i]}" = "--rm" ] && [ "${args[$((i + 1))]}" = "train" ]; then
    rest=("${args[@]:$((i + 2))}")
    if [ ${#rest[@]} -eq 0 ]; then exec snakemake --cores all; else exec "${rest[@]}"; fi
  fi
done
"""


@contextmanager
def object_store(state: Path) -> Iterator[str]:
    """The stack's authenticated S3 server (stack.start_s3), accepting only the EC2 keys the fake
    Keystone hands out; no bucket yet (configure makes it)."""
    port = free_port()
    state.mkdir()
    started = stack.start_s3(state, port, {"AWS_ACCESS_KEY_ID": EC2[0], "AWS_SECRET_ACCESS_KEY": EC2[1]}, [])
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stack._kill_group(started["pid"])


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(password="right-password", capacity={"compute_skylake": 1}) as server:
        server.ec2_credential = EC2
        yield server


def bucket_keys(endpoint: str, bucket: str) -> set[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=EC2[0], aws_secret_access_key=EC2[1],
                      region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def test_a_node_run_is_pushed_copied_home_and_guards_teardown(
    tmp_path: Path, env: dict[str, str], fake: FakeChameleon
) -> None:
    from mlflow.tracking import MlflowClient

    project = on_fake(tmp_path, env, fake, "chameleon_site=CHI@UC")
    project.set_config("chameleon.node_type", "compute_skylake")
    project.set_config("chameleon.open_ports", [8888])
    project.run("git", "commit", "-qam", "CPU node")
    node, stub = tmp_path / "node", tmp_path / "stub-bin"
    stub.mkdir()
    firewall = '#!/usr/bin/env bash\necho "firewall-cmd $*" >> "$HOME/../firewall.log"\n'
    for name, text in (("docker", DOCKER_STUB), ("firewall-cmd", firewall),
                       ("sudo", '#!/usr/bin/env bash\nexec "$@"\n')):
        (stub / name).write_text(text)
        (stub / name).chmod(0o755)
    remote = Project(project.path, {**project.env, "REPROSTACK_NODE_ROOT": str(node), "HOME": str(node),
                                    "PATH": f"{stub}:{project.env['PATH']}"})
    with object_store(tmp_path / "object-store") as endpoint:
        fake.object_store = endpoint
        remote.run("snakemake", "-c1", "provision")

        configured = remote.run("snakemake", "-c1", "configure")
        said = configured.stdout + configured.stderr
        assert "outputs will be pushed to the DVC remote 'chameleon'" in said
        assert EC2[1] not in said
        head = project.run("git", "rev-parse", "HEAD").stdout.strip()
        assert remote.run("git", "-C", str(node / "project"), "rev-parse", "HEAD").stdout.strip() == head
        env_file = node / "project" / ".env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert env_file.read_text() == (project.path / ".env").read_text()
        for line in env_file.read_text().splitlines():
            assert "=" not in line or line.split("=", 1)[1] not in said
        assert (tmp_path / "firewall.log").read_text().splitlines() == [
            "firewall-cmd --quiet --permanent --add-port=8888/tcp", "firewall-cmd --quiet --reload"]
        assert "compose -f docker/compose.yaml --env-file .env up -d --wait" in (
            tmp_path / "docker-calls.log").read_text()
        assert fake.requests_matching("POST", "/credentials/OS-EC2"), "EC2 credentials were not made"
        local_dvc = project.path / ".dvc" / "config.local"
        node_dvc = node / "project" / ".dvc" / "config.local"
        for path in (local_dvc, node_dvc):
            assert path.stat().st_mode & 0o777 == 0o600
            assert f"endpointurl = {endpoint}" in path.read_text() and EC2[1] in path.read_text()
        assert EC2[1] not in project.run("git", "grep", "-I", "-e", EC2[1], check=False).stdout

        ran = remote.run("snakemake", "-c1", "remote_run")
        assert "steps (100%) done" in ran.stdout + ran.stderr  # the node's pipeline streamed here
        node_run = json.loads((node / "project" / "results" / "run.json").read_text())
        record = state(project)["remote_run"]
        assert record["run_id"] == node_run["run_id"] and record["pushed"] and not record["collected"]
        node_lock = yaml.safe_load((node / "project" / "dvc.lock").read_text())["stages"]
        model_md5 = next(o["md5"] for o in node_lock["train"]["outs"] if o["path"] == "models")
        stored = bucket_keys(endpoint, "dvc")
        assert f"dvc/files/md5/{model_md5[:2]}/{model_md5[2:]}" in stored  # models/ listing pushed

        refused = remote.run("snakemake", "-c1", "teardown", check=False)
        assert refused.returncode != 0
        assert f"MLflow run {node_run['run_id']}" in refused.stdout + refused.stderr
        assert "snakemake -c1 collect" in refused.stdout + refused.stderr
        assert not fake.is_empty() and state(project)["servers"][0]["id"]

        collected = remote.run("snakemake", "-c1", "collect")
        assert "pulled from the DVC remote 'chameleon'" in collected.stdout
        here = json.loads((project.path / "results" / "run.json").read_text())
        assert here["copied_from"]["run_id"] == node_run["run_id"] and here["run_id"] != node_run["run_id"]
        assert digest(project.path / "models") == digest(node / "project" / "models")
        assert state(project)["remote_run"]["collected"]
        assert "remote: collected" in (project.path / "logs" / "collect.log").read_text()  # the rule's log:
        # What came back is current here: neither front end wants to redo it.
        assert "Nothing to be done" in remote.run("snakemake", "-n").stdout
        assert "up to date" in remote.run("dvc", "status").stdout

        again = remote.run("python", "workflow/scripts/remote.py", "collect")
        assert f"already copied here as run {here['run_id']}" in again.stdout

        remote.run("snakemake", "-c1", "teardown")
        assert fake.is_empty()
    # The node is gone, and so is the object store: everything is here.
    shutil.rmtree(node)
    client = MlflowClient(f"sqlite:///{project.path / 'mlruns.db'}")
    runs = client.search_runs([here["experiment_id"]],
                              filter_string=f"tags.`reprostack.copied_from.run_id` = '{node_run['run_id']}'")
    assert [r.info.run_id for r in runs] == [here["run_id"]]  # one copy, however often collected
    copy = runs[0]
    assert copy.info.status == "FINISHED"
    assert copy.data.params["model.epochs"] == str(project.config["model"]["epochs"])
    assert copy.data.tags["git.commit"] == project.run("git", "rev-parse", "HEAD").stdout.strip()
    history = client.get_metric_history(here["run_id"], "epoch_loss")
    assert len(history) == project.config["model"]["epochs"]
    artifacts = {a.path for a in client.list_artifacts(here["run_id"], "provenance")}
    assert {"provenance/git.diff", "provenance/pip-freeze.txt", "provenance/data.json"} <= artifacts
    assert {d.dataset.name for d in copy.inputs.dataset_inputs} == {"raw", "train", "test"}
    model_id = copy.outputs.model_outputs[0].model_id
    assert client.get_logged_model(model_id).source_run_id == here["run_id"]
    import joblib
    import mlflow
    import numpy as np

    x_test = np.load(project.path / "data" / "prepared" / "x_test.npy")
    mlflow.set_tracking_uri(f"sqlite:///{project.path / 'mlruns.db'}")
    try:
        served = mlflow.pyfunc.load_model(f"models:/{model_id}").predict(x_test)
    finally:
        mlflow.set_tracking_uri(None)
    fitted = joblib.load(project.path / "models" / "model.joblib")
    assert (np.asarray(served) == fitted.predict(x_test)).all()  # the copied model is the trained one
    assert "up to date" in project.run("dvc", "status").stdout
