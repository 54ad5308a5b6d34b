"""The real tracking and storage stack on loopback: PostgreSQL, the S3 endpoint (moto's S3 behind
keys, kept on disk) and the MLflow server with its login, started by the project's own
workflow/scripts/stack.py with its defaults. Real connections only: SQL on PostgreSQL, boto3 on the
bucket, DVC push/pull over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg2
import pytest
from conftest import Project, generate, make_env
from loopback import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
                       reason="PostgreSQL server binaries missing (make setup installs them)"),
]


def secrets_of(project: Project) -> dict[str, str]:
    lines = (project.path / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def serve(project: Project, *extra: str) -> dict[str, int]:
    ports = {"postgres": free_port(), "mlflow": free_port(), "s3": free_port()}
    project.set_config("tracking.mode", "server")
    project.set_config("tracking.server_uri", f"http://127.0.0.1:{ports['mlflow']}")
    project.set_config("storage.mode", "s3")
    project.set_config("storage.endpoint", f"http://127.0.0.1:{ports['s3']}")
    project.run("git", "commit", "-qam", "Use the service stack")
    up = project.run("python", "workflow/scripts/stack.py", "up", "--postgres-port",
                     str(ports["postgres"]), *extra)
    assert f"http://127.0.0.1:{ports['mlflow']}" in up.stdout
    return ports


def assert_nothing_left(project: Project, record: dict) -> None:
    for name in ("mlflow", "s3"):
        with pytest.raises(ProcessLookupError):
            os.killpg(record[name]["pid"], 0)
    assert not (Path(record["postgres"]["data"]) / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def stacked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dict[str, int]]]:
    tmp = tmp_path_factory.mktemp("services")
    project = generate(tmp, "paper", make_env(tmp), "framework=sklearn")
    ports = serve(project)  # authentication is the default
    record = json.loads((project.path / ".stack" / "stack.json").read_text())
    try:
        yield project, ports
    finally:
        down = project.run("python", "workflow/scripts/stack.py", "down")
        assert "mlflow, s3, postgres" in down.stdout
        assert_nothing_left(project, record)


def s3_client(project: Project, port: int):
    env = secrets_of(project)
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def keys(project: Project, port: int, bucket: str) -> list[str]:
    pages = s3_client(project, port).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_run_lands_in_postgres_and_the_bucket(stacked: tuple[Project, dict[str, int]]) -> None:
    project, ports = stacked
    project.snakemake()
    run_id = project.json("results/run.json")["run_id"]
    assert project.json("results/run.json")["tracking_uri"] == f"http://127.0.0.1:{ports['mlflow']}"
    env = secrets_of(project)
    with psycopg2.connect(host="127.0.0.1", port=ports["postgres"], user=env["POSTGRES_USER"],
                          password=env["POSTGRES_PASSWORD"], dbname=env["POSTGRES_DB"]) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
            assert cur.fetchall() == [("FINISHED",)]
            cur.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = 'git.commit'", (run_id,))
            head = project.run("git", "rev-parse", "HEAD").stdout.strip()
            assert cur.fetchall() == [(head,)]
            cur.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = %s", (run_id,))
            assert dict(cur.fetchall())["accuracy"] == project.json("results/metrics.json")["accuracy"]
            # The run rewrote no tracked file (the S3 remote goes to .dvc/config.local): not dirty.
            cur.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = 'git.dirty'", (run_id,))
            assert cur.fetchall() == [("false",)]
    assert project.run("git", "status", "--porcelain", "--", ".dvc").stdout == ""
    assert (project.path / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
    objects = keys(project, ports["s3"], "mlflow")
    for name in ("provenance/git.diff", "provenance/pip-freeze.txt", "provenance/environment.json",
                 "reproduction/report.md"):
        assert any(key.endswith(f"{run_id}/artifacts/{name}") for key in objects), name
    assert any(re.search(r"models/m-\w+/artifacts/MLmodel$", key) for key in objects)
    assert not (project.path / "mlruns.db").exists(), "server mode keeps nothing locally"

    # DVC: push, lose the local cache and workspace copies, pull back identical data.
    project.run("python", "workflow/scripts/push.py")
    assert keys(project, ports["s3"], "dvc")
    before = {p: hashlib.sha256((project.path / p).read_bytes()).hexdigest()
              for p in ("data/raw/digits.csv", "data/prepared/x_train.npy", "models/model.joblib")}
    for folder in (".dvc/cache", "data/raw", "data/prepared", "models"):
        shutil.rmtree(project.path / folder)
    project.run("python", "workflow/scripts/pull.py")
    after = {p: hashlib.sha256((project.path / p).read_bytes()).hexdigest() for p in before}
    assert after == before
    assert "up to date" in project.dvc("status").stdout


def test_s3_down_at_push_keeps_data_and_a_later_push_succeeds(
    stacked: tuple[Project, dict[str, int]]
) -> None:
    project, ports = stacked
    project.set_config("seed", 7)  # new split and model: objects the remote does not have yet
    project.snakemake()
    pending = set(keys(project, ports["s3"], "dvc"))
    project.set_config("storage.endpoint", f"http://127.0.0.1:{free_port()}")
    failed = project.run("python", "workflow/scripts/push.py", check=False)
    assert failed.returncode != 0
    assert "unreachable" in failed.stderr and "local DVC cache" in failed.stderr
    assert any((project.path / ".dvc" / "cache").rglob("*"))
    project.set_config("storage.endpoint", f"http://127.0.0.1:{ports['s3']}")
    project.run("python", "workflow/scripts/push.py")
    assert set(keys(project, ports["s3"], "dvc")) > pending


def test_tracking_server_down_fails_before_training(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    dead = free_port()
    project.set_config("tracking.mode", "server")
    project.set_config("tracking.server_uri", f"http://127.0.0.1:{dead}")
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    assert f"the MLflow server at http://127.0.0.1:{dead} is unreachable" in failed.stderr
    assert "Nothing was run" in failed.stderr
    assert not (project.path / "results" / "history.json").exists()


def test_wrong_mlflow_password_is_named(stacked: tuple[Project, dict[str, int]]) -> None:
    project, _ = stacked
    wrong = Project(project.path, {**project.env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"})
    wrong.set_config("model.epochs", 3)
    failed = wrong.snakemake(check=False)
    assert failed.returncode != 0
    assert "rejected the credentials of user 'admin'" in failed.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in failed.stderr and "not-the-password" not in failed.stderr


def test_wrong_postgres_password_is_named(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env, "framework=sklearn")
    serve(project)
    project.run("python", "workflow/scripts/stack.py", "down")
    env_file = project.path / ".env"
    env_file.write_text(re.sub(r"^POSTGRES_PASSWORD=.*$", "POSTGRES_PASSWORD=changed-after-init",
                               env_file.read_text(), flags=re.M))
    failed = project.run("python", "workflow/scripts/stack.py", "up", "--postgres-port",
                         str(free_port()), check=False)
    assert failed.returncode != 0
    assert "PostgreSQL" in failed.stderr and "rejected the password for user 'mlflow'" in failed.stderr
    assert "changed-after-init" not in failed.stderr
    leftovers = subprocess.run(["pgrep", "-f", str(project.path)], capture_output=True, text=True)
    assert leftovers.stdout == "", "nothing left running"


def test_no_secret_reaches_git_logs_mlflow_or_the_bucket(stacked: tuple[Project, dict[str, int]]) -> None:
    project, ports = stacked
    values = [v for k, v in secrets_of(project).items() if len(v) >= 16]
    assert len(values) >= 4
    haystacks: dict[str, bytes] = {}
    for path in project.path.rglob("*"):
        rel = path.relative_to(project.path).as_posix()
        if path.is_file() and rel not in (".env", ".dvc/config.local") and not rel.startswith(
            (".git/", ".dvc/cache/", ".stack/pg/")
        ):
            haystacks[rel] = path.read_bytes()
    haystacks["git history"] = subprocess.run(
        ["git", "log", "-p", "--all"], cwd=project.path, capture_output=True, check=True
    ).stdout
    env = secrets_of(project)
    with psycopg2.connect(host="127.0.0.1", port=ports["postgres"], user=env["POSTGRES_USER"],
                          password=env["POSTGRES_PASSWORD"], dbname=env["POSTGRES_DB"]) as conn:
        with conn.cursor() as cur:
            for table in ("params", "tags", "runs", "experiments", "inputs", "datasets"):
                cur.execute(f"SELECT * FROM {table}")
                haystacks[f"postgres {table}"] = repr(cur.fetchall()).encode()
    client = s3_client(project, ports["s3"])
    for bucket in ("mlflow", "dvc"):
        for key in keys(project, ports["s3"], bucket):
            haystacks[f"s3://{bucket}/{key}"] = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert any(name.startswith(".stack/") and name.endswith(".log") for name in haystacks)
    assert any(name.startswith(".snakemake/log/") for name in haystacks)
    leaks = [name for name, blob in haystacks.items() for v in values if v.encode() in blob]
    assert leaks == []


def test_concurrent_first_runs_share_one_new_experiment(
    stacked: tuple[Project, dict[str, int]], tmp_path: Path
) -> None:
    """Four clients create the same new experiment at the same moment: one creates it, the others
    find it (MLflow answers RESOURCE_ALREADY_EXISTS to the losers); all get the same id."""
    project, _ = stacked
    ready = tmp_path / "ready"
    ready.mkdir()
    script = (
        "import os, sys, time; from pathlib import Path\n"
        "sys.path.insert(0, 'src'); sys.path.insert(0, 'workflow/scripts')\n"
        "from _step import load_config, load_dotenv\n"
        "from mlflow.tracking import MlflowClient\n"
        "from digits_repro import tracking\n"
        "load_dotenv(); config = load_config()\n"
        "config['tracking']['experiment'] = sys.argv[1]\n"
        "client = MlflowClient(config['tracking']['server_uri'])\n"
        "ready = Path(sys.argv[2]); (ready / str(os.getpid())).touch()\n"
        "while len(list(ready.iterdir())) < 4: time.sleep(0.005)\n"  # a barrier: all start at once
        "print(tracking._experiment(client, Path('.'), config))\n"
    )
    name = f"race-{os.getpid()}-{int(time.time())}"
    procs = [subprocess.Popen(["python", "-c", script, name, str(ready)], cwd=project.path, env=project.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-500:] for _, err in results]
    ids = {out.strip() for out, _ in results}
    assert len(ids) == 1 and ids != {""}


def test_strangers_refused_outage_changes_nothing_restart_loses_nothing(
    stacked: tuple[Project, dict[str, int]]
) -> None:
    """Keys and login by default; PostgreSQL down stops a run before any job (one line, outputs
    untouched, `status` names it); `down` then `up` keeps every run, object and artifact; the
    rerun then does what the outage stopped."""
    import urllib.error
    import urllib.request

    import mlflow
    from botocore.exceptions import ClientError

    project, ports = stacked
    s3, mlflow_url = f"http://127.0.0.1:{ports['s3']}", f"http://127.0.0.1:{ports['mlflow']}"
    env = secrets_of(project)
    dvc_object = keys(project, ports["s3"], "dvc")[0]
    # Strangers: no keys, a made-up key, the right key with a wrong secret, moto's reset API.
    for url, method in ((f"{s3}/dvc/{dvc_object}", "GET"), (f"{s3}/dvc", "GET"),
                        (f"{s3}/moto-api/reset", "POST"),
                        (f"{mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", "GET")):
        body = b"" if method == "POST" else None
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, method=method, data=body))
        assert refused.value.code in (401, 403), url
    for key_id, secret, code in (("AKIAUNKNOWN", env["AWS_SECRET_ACCESS_KEY"], "InvalidAccessKeyId"),
                                 (env["AWS_ACCESS_KEY_ID"], "not-the-secret", "SignatureDoesNotMatch")):
        stranger = boto3.client("s3", endpoint_url=s3, region_name="us-east-1",
                                aws_access_key_id=key_id, aws_secret_access_key=secret)
        with pytest.raises(ClientError) as refused:
            stranger.list_objects_v2(Bucket="dvc")
        assert refused.value.response["Error"]["Code"] == code

    # PostgreSQL goes down: status says so, and a changed run stops before any job, changing nothing.
    before = {p: hashlib.sha256((project.path / p).read_bytes()).hexdigest()
              for p in ("models/model.joblib", "results/metrics.json", "data/prepared/x_train.npy")}
    objects = {bucket: set(keys(project, ports["s3"], bucket)) for bucket in ("mlflow", "dvc")}
    old_run = project.json("results/run.json")["run_id"]
    record = json.loads((project.path / ".stack" / "stack.json").read_text())
    stop = ["pg_ctl", "-D", record["postgres"]["data"], "-m", "fast", "-w", "stop"]
    pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
    stop[0] = str(pg_ctl)
    subprocess.run((["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + stop, check=True,
                   capture_output=True)
    status = project.run("python", "workflow/scripts/stack.py", "status", check=False)
    assert status.returncode == 1
    assert re.search(r"postgres\s+DOWN", status.stdout)
    assert re.search(r"mlflow\s+DOWN .*HTTP 503", status.stdout)
    assert re.search(r"s3\s+up", status.stdout)
    project.set_config("model.epochs", 5)
    failed = project.snakemake(check=False)
    assert failed.returncode != 0
    assert "answered HTTP 503" in failed.stderr and "Nothing was run" in failed.stderr
    assert "Traceback" not in failed.stderr and "localrule" not in failed.stdout + failed.stderr
    assert before == {p: hashlib.sha256((project.path / p).read_bytes()).hexdigest() for p in before}

    # Restart everything: every object, the run, its metrics and artifacts are still there.
    project.run("python", "workflow/scripts/stack.py", "down")
    project.run("python", "workflow/scripts/stack.py", "up", "--postgres-port", str(ports["postgres"]))
    assert project.run("python", "workflow/scripts/stack.py", "status").returncode == 0
    assert {bucket: set(keys(project, ports["s3"], bucket)) for bucket in objects} == objects
    client = mlflow.MlflowClient(mlflow_url)
    saved = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_TRACKING_")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=env["MLFLOW_TRACKING_USERNAME"],
                      MLFLOW_TRACKING_PASSWORD=env["MLFLOW_TRACKING_PASSWORD"])
    try:
        run = client.get_run(old_run)
        assert run.info.status == "FINISHED"
        assert run.data.metrics["accuracy"] == json.loads(
            (project.path / "results" / "metrics.json").read_text())["accuracy"]
        # Downloads go through presigned URLs to the S3 endpoint: signed with the same keys.
        copy = Path(client.download_artifacts(old_run, "provenance/git.diff", str(project.path / ".stack")))
        assert copy.read_bytes() == next(
            s3_client(project, ports["s3"]).get_object(Bucket="mlflow", Key=k)["Body"].read()
            for k in objects["mlflow"] if k.endswith(f"{old_run}/artifacts/provenance/git.diff"))
    finally:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)
        os.environ.update(saved)
    shutil.rmtree(project.path / ".dvc" / "cache")
    shutil.rmtree(project.path / "data" / "raw")
    project.run("dvc", "pull", "-q", "data/raw")
    assert (project.path / "data" / "raw" / "digits.csv").exists()

    # The outage fixed, the rerun trains with the new value and records a second run.
    project.snakemake()
    assert project.json("results/run.json")["run_id"] != old_run
    assert project.json("results/history.json")[-1]["epoch"] == 5
