"""A stranger reproduces a published paper repository: the author publishes to an S3 server on
loopback (a public-read bucket, read over plain HTTP), the repository is served by `git daemon`,
the author's folder, cache and remote are deleted, and reviewers with another HOME clone it
elsewhere and reproduce with each front end. Then the faults: tampered data on the remote, a
tampered reference, a reviewer without keys, and what publish refuses."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import boto3
import pytest
from conftest import Project, generate, make_env, run
from loopback import git_daemon, s3_server

pytestmark = pytest.mark.slow

BUCKET = "paper-data"
STEPS = {"environment", "data", "prepare", "train", "evaluate", "track", "verify"}


def s3(endpoint: str) -> object:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="author", aws_secret_access_key="author-secret")


def public_read(client: object, bucket: str) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
        "Resource": [f"arn:aws:s3:::{bucket}/*"]}]}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def author_project(tmp: Path, endpoint: str, public: bool) -> Project:
    """An author's sklearn project using the S3 remote, run once (not yet published)."""
    project = generate(tmp, "paper", make_env(tmp), "framework=sklearn")
    project.set_config("storage.mode", "s3")
    project.set_config("storage.endpoint", endpoint)
    project.set_config("storage.bucket", BUCKET)
    if public:
        project.set_config("storage.public_url", f"{endpoint}/{BUCKET}/dvc")
    project.run("git", "commit", "-qam", "Share data through the lab's S3 bucket")
    project.snakemake()
    return project


def reviewer_env(tmp: Path, name: str) -> dict[str, str]:
    env = make_env(tmp / name)
    home = tmp / name / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    return {**env, "HOME": str(home)}


def clone(url: str, target: Path, env: dict[str, str]) -> Project:
    target.parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", url, str(target)], target.parent, env)
    return Project(target, env)


def ran(output: str) -> set[str]:
    return set(re.findall(r"^(?:local)?rule (\w+):", output, re.M)) | set(
        re.findall(r"Running stage '(\w+)'", output))


def assert_reproduced(reviewer: Project, reference: dict) -> None:
    """Recomputed, verified, and recorded in the reviewer's own store with the reviewer's facts."""
    assert reviewer.json("results/verify.json")["status"] == "ok"
    assert reviewer.json("results/metrics.json") == reference
    environment = reviewer.json("results/environment.json")
    assert environment["recorded"]["workdir"] == str(reviewer.path)
    with sqlite3.connect(reviewer.path / "mlruns.db") as db:
        runs = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        assert len(runs) == 1 and runs[0][1] == "FINISHED"
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (runs[0][0],)))
        logged = dict(db.execute("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", (runs[0][0],)))
    assert tags["environment.workdir"] == str(reviewer.path)
    assert tags["environment.recorded_at"] == environment["recorded"]["at"]
    assert tags["verify.status"] == "ok"
    assert logged["accuracy"] == reference["accuracy"]


def test_publish_then_strangers_reproduce_anywhere(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        client = s3(endpoint)
        client.create_bucket(Bucket=BUCKET)
        public_read(client, BUCKET)
        author = author_project(tmp_path / "author", endpoint, public=True)
        secrets = dict(line.split("=", 1) for line in (author.path / ".env").read_text().splitlines()
                       if "=" in line and not line.startswith("#"))

        published = author.snakemake("publish")
        assert "publish: data and models pushed to the DVC remote 'shared'" in published.stdout
        assert author.run("git", "status", "--porcelain").stdout == ""
        assert author.run("git", "log", "-1", "--format=%s").stdout.startswith("Publish reference results")
        committed = author.run("git", "show", "HEAD:.dvc/config").stdout
        assert f"url = {endpoint}/{BUCKET}/dvc" in committed and "verify = true" in committed
        assert re.search(r"remote = public", committed)
        history = author.run("git", "log", "-p", "--all").stdout
        assert not any(value in history for key, value in secrets.items() if len(value) > 8)
        reference = author.json("reference/metrics.json")
        # Everything the lock pins is in the bucket, under DVC's content addresses.
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
        raw_md5 = re.search(r"path: data/raw\n\s+hash: md5\n\s+md5: (\w+\.dir)",
                            (author.path / "dvc.lock").read_text()).group(1)
        assert f"dvc/files/md5/{raw_md5[:2]}/{raw_md5[2:]}" in keys

        # The repository leaves the author's machine; everything local to the author goes.
        served = tmp_path / "served"
        run(["git", "clone", "-q", "--bare", str(author.path), str(served / "paper.git")], tmp_path,
            author.env)
        shutil.rmtree(author.path)
        shutil.rmtree(tmp_path / "author" / "paper-dvc-remote", ignore_errors=True)

        with git_daemon(served) as base:
            url = f"{base}/paper.git"
            # Snakemake, another HOME, another path, no keys.
            first = clone(url, tmp_path / "elsewhere" / "review", reviewer_env(tmp_path, "r1"))
            proc = first.snakemake()
            output = proc.stdout + proc.stderr
            assert ran(output) >= STEPS
            assert "data: pulled from the DVC remote 'public', checked against dvc.lock" in output
            assert "verify: reproduced" in output
            assert_reproduced(first, reference)
            # A second run does nothing, and logs nothing new.
            again = first.snakemake()
            assert ran(again.stdout + again.stderr) <= {"all"}

            # dvc repro in a second clone, the same outcome.
            second = clone(url, tmp_path / "other" / "review-dvc", reviewer_env(tmp_path, "r2"))
            repro = second.dvc("repro")
            assert ran(repro.stdout) >= STEPS
            assert_reproduced(second, reference)

            # Even with the author's outputs pulled first, they do not stand in for recomputed ones.
            third = clone(url, tmp_path / "third" / "review", reviewer_env(tmp_path, "r3"))
            third.dvc("pull")
            assert (third.path / "models").is_dir()
            assert "train" in ran(third.dvc("repro").stdout)
            assert_reproduced(third, reference)

            # Tampered data on the shared remote: refused, naming the file; fixed, the rerun passes.
            listing = json.loads(client.get_object(
                Bucket=BUCKET, Key=f"dvc/files/md5/{raw_md5[:2]}/{raw_md5[2:]}")["Body"].read())
            md5 = listing[0]["md5"]
            key = f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
            original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            tampered_bytes = re.sub(rb",1(\r?\n)", rb",7\1", original, count=5)
            assert tampered_bytes != original
            client.put_object(Bucket=BUCKET, Key=key, Body=tampered_bytes)
            tampered = clone(url, tmp_path / "t" / "review", reviewer_env(tmp_path, "r4"))
            failed = tampered.snakemake(check=False)
            assert failed.returncode != 0
            assert (f"data: the DVC remote 'public' serves data that does not match dvc.lock: "
                    f"data/raw/digits.csv (expected md5 {md5})") in failed.stderr
            assert "Traceback" not in failed.stderr
            assert not (tampered.path / "models").exists()
            client.put_object(Bucket=BUCKET, Key=key, Body=original)
            fixed = tampered.snakemake()
            assert "train" in ran(fixed.stdout + fixed.stderr)
            assert tampered.json("results/verify.json")["status"] == "ok"

            # A reference edited after publishing is named; restored, only verify reruns and passes.
            edited = tampered.path / "reference" / "metrics.json"
            values = json.loads(edited.read_text())
            edited.write_text(json.dumps({**values, "accuracy": 0.999}, indent=2, sort_keys=True) + "\n")
            refused = tampered.snakemake(check=False)
            assert refused.returncode != 0
            assert "verify: the committed reference cannot be trusted" in refused.stderr
            assert "reference/metrics.json was altered after publishing" in refused.stderr
            tampered.run("git", "checkout", "--", "reference")
            restored = tampered.snakemake()
            assert ran(restored.stdout + restored.stderr) - {"all"} == {"verify"}
            assert tampered.json("results/verify.json")["status"] == "ok"


def test_publish_refuses_clearly_and_private_remotes_fall_back(tmp_path: Path) -> None:
    with s3_server() as endpoint:
        client = s3(endpoint)
        client.create_bucket(Bucket=BUCKET)
        author = author_project(tmp_path, endpoint, public=False)

        # A dirty tree.
        readme = author.path / "README.md"
        readme.write_text(readme.read_text() + "\nDraft.\n")
        dirty = author.snakemake("publish", check=False)
        assert dirty.returncode != 0
        assert "publish: uncommitted changes in README.md: commit or stash them first" in dirty.stderr
        assert not (author.path / "reference" / "metrics.json").exists()
        author.run("git", "checkout", "--", "README.md")

        # The shared remote unreachable: nothing published; then it comes back.
        author.set_config("storage.endpoint", "http://127.0.0.1:9")
        author.run("git", "commit", "-qam", "A wrong endpoint")
        down = author.snakemake("publish", check=False)
        assert down.returncode != 0
        # Checked before anything runs (Snakemake's onstart), naming the setting.
        assert "storage: the S3 endpoint http://127.0.0.1:9 is unreachable (storage.endpoint" in down.stderr
        assert "Traceback" not in down.stderr and "dvc.org/support" not in down.stderr
        assert not (author.path / "reference" / "metrics.json").exists()
        author.set_config("storage.endpoint", endpoint)
        author.run("git", "commit", "-qam", "The right endpoint")
        author.snakemake("publish")
        committed = author.run("git", "show", "HEAD:.dvc/config").stdout
        assert "remote = shared" in committed and "access_key_id" not in committed

        # A reviewer without keys for the private remote: one line, then the pinned source.
        reviewer = clone(str(author.path), tmp_path / "elsewhere" / "review", reviewer_env(tmp_path, "r"))
        proc = reviewer.snakemake()
        output = proc.stdout + proc.stderr
        assert re.search(r"data: could not pull data/raw from the DVC remote 'shared' \(.+\); fetching "
                         r"from the pinned source instead", output)
        assert "Traceback" not in output
        assert reviewer.json("results/verify.json")["status"] == "ok"

        # A public URL the bucket does not serve anonymously: refused, .dvc/config untouched.
        author.set_config("storage.public_url", f"{endpoint}/{BUCKET}/dvc")
        author.run("git", "commit", "-qam", "Publish over HTTP")
        head = author.run("git", "rev-parse", "HEAD").stdout
        private = author.snakemake("publish", check=False)
        assert private.returncode != 0
        assert f"publish: reviewers cannot read {endpoint}/{BUCKET}/dvc without credentials" in private.stderr
        assert author.run("git", "status", "--porcelain").stdout == ""
        assert author.run("git", "rev-parse", "HEAD").stdout == head
        public_read(client, BUCKET)
        author.snakemake("publish")
        assert "remote = public" in author.run("git", "show", "HEAD:.dvc/config").stdout


def test_a_moved_project_reads_and_writes_only_inside_itself(tmp_path: Path) -> None:
    project = generate(tmp_path / "a", "paper", make_env(tmp_path), "framework=sklearn")
    project.snakemake()
    moved = tmp_path / "b" / "paper-moved"
    moved.parent.mkdir()
    shutil.move(project.path, moved)
    shutil.rmtree(tmp_path / "a")
    project = Project(moved, project.env)
    project.set_config("model.epochs", 3)
    proc = project.snakemake()
    assert "train" in ran(proc.stdout + proc.stderr)
    assert not (tmp_path / "a").exists()
    with sqlite3.connect(moved / "mlruns.db") as db:
        locations = [row[0] for row in db.execute("SELECT artifact_uri FROM runs")]
        locations += [row[0] for row in db.execute("SELECT artifact_location FROM experiments")]
    assert len(locations) == 4
    assert all(str(moved) in loc and str(tmp_path / "a") not in loc for loc in locations)
    newest = project.json("results/run.json")["run_id"]
    assert (moved / "mlartifacts" / newest / "artifacts" / "provenance" / "git.diff").is_file()
    # The DVC cache is inside; the local remote is this machine's, by absolute path (not in git),
    # and a step's rerun does not touch it: the old folder was not recreated (above).
    assert str(tmp_path / "a") not in (moved / ".dvc" / "config").read_text()
    assert f"url = {tmp_path / 'a' / 'paper-dvc-remote'}" in (moved / ".dvc" / "config.local").read_text()
    # Artifacts of the first run, logged before the move, are still readable through MLflow.
    first = next(r for (r,) in sqlite3.connect(moved / "mlruns.db").execute(
        "SELECT run_uuid FROM runs WHERE run_uuid != ?", (newest,)))
    listing = subprocess.run(
        [str(Path(project.env["PATH"].split(":")[0]) / "python"), "-c",
         "import sys; from mlflow.tracking import MlflowClient; "
         f"c = MlflowClient('sqlite:///{moved}/mlruns.db'); "
         f"print([f.path for f in c.list_artifacts('{first}', 'provenance')])"],
        capture_output=True, text=True, env=project.env, cwd=moved)
    assert "provenance/git.diff" in listing.stdout, listing.stderr
