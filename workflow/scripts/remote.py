"""Work on the provisioned node over SSH: configure it, run the pipeline there, collect the results.

    python workflow/scripts/remote.py configure    # Docker (+ GPU runtime), repo at this commit, .env, stack
    python workflow/scripts/remote.py remote_run   # the pipeline in the training container, streamed;
                                                   # the MLflow run exported, DVC outputs pushed
    python workflow/scripts/remote.py collect      # results, DVC outputs and the MLflow run, here

Results outlive the node: remote_run pushes the DVC outputs to a remote outside the node (the
site's object store by default, see object_store.py) and exports the MLflow run to a folder;
collect pulls the outputs and imports the run into this project's own tracking store (a tracking
server outside the node already has it). Until collect has run, teardown refuses to release the
node (the state file's `remote_run` says what is unsaved).

Commands go through a runner: SSH to cc@<floating IP> (the real path), or, for tests, a local shell
in a folder that stands in for the node (REPROSTACK_RUNNER=local, REPROSTACK_NODE_ROOT=folder).
The repository travels as a git bundle of the current commit (no public remote needed); the
secrets travel as a file copy (never on a command line, never echoed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from chameleon import ROOT, ChameleonError, check_credentials, read_state, settings, write_state

PROJECT = "project"  # the clone's folder in the node's home
SETUP = Path(__file__).with_name("node_setup.sh")
# From the project root. Compose looks for .env in the compose file's folder (docker/), so the
# project's .env is named; --project-directory would move the file's relative paths too.
COMPOSE = "docker compose -f docker/compose.yaml --env-file .env"


class Runner:
    def run(self, command: str) -> None:
        raise NotImplementedError

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError


class SSHRunner(Runner):
    """ssh/scp to cc@address; host keys are accepted on first use (a fresh node), then pinned."""

    def __init__(self, address: str, user: str = "cc") -> None:
        self.target = f"{user}@{address}"
        self.options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                        "-o", "ConnectTimeout=20"]

    def run(self, command: str) -> None:
        _check(subprocess.run(["ssh", *self.options, self.target, command]), command)

    def put(self, local: Path, remote: str) -> None:
        _check(subprocess.run(["scp", "-q", *self.options, str(local), f"{self.target}:{remote}"]),
               f"copy {local.name} to the node")

    def get(self, remote: str, local: Path) -> None:
        _check(subprocess.run(["scp", "-q", "-r", *self.options, f"{self.target}:{remote}", str(local)]),
               f"copy {remote} from the node")


class LocalRunner(Runner):
    """A local shell in a folder that stands in for the node's home (tests)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)

    def run(self, command: str) -> None:
        _check(subprocess.run(["bash", "-c", command], cwd=self.home), command)

    def put(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, self.home / remote)

    def get(self, remote: str, local: Path) -> None:
        source = self.home / remote
        if source.is_dir():
            shutil.copytree(source, local, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, local)


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        first = what.splitlines()[0][:120]
        raise ChameleonError(f"remote: '{first}' failed on the node (exit {proc.returncode})")


def runner() -> Runner:
    state = read_state()
    if os.environ.get("REPROSTACK_RUNNER") == "local":
        return LocalRunner(Path(os.environ["REPROSTACK_NODE_ROOT"]))
    if not state.get("floating_ip"):
        raise ChameleonError("remote: no node yet; run `snakemake -c1 provision` first")
    return SSHRunner(state["floating_ip"])


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def configure(config: dict) -> None:
    cham = settings(config)
    node = runner()
    node.put(SETUP, "node_setup.sh")
    if cham["kind"] == "kvm":
        # The security group made by provision is the firewall on KVM: firewalld is not asked to
        # open anything, so nothing depends on it running (or being installed) on the instance.
        extra_ports = ""
        print("remote: KVM: the security group lets in tcp "
              + ", ".join(map(str, cham["ingress_ports"])) + "; firewalld is left alone")
    else:
        extra_ports = " ".join(str(p) for p in cham["ingress_ports"] if p != 22)  # firewalld allows SSH
    node.run(f"bash node_setup.sh {cham['accelerator']} {extra_ports}".rstrip())
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("remote: note: uncommitted changes stay here; the node gets commit " + commit[:12])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "repo.bundle"
        _git("bundle", "create", str(bundle), "HEAD")
        node.put(bundle, "repo.bundle")
    node.run(f"if [ -d {PROJECT}/.git ]; then git -C {PROJECT} fetch -q ../repo.bundle HEAD; "
             f"else git clone -q repo.bundle {PROJECT}; fi && git -C {PROJECT} checkout -q --detach {commit}")
    if (ROOT / ".env").exists():
        node.run(f"umask 077 && : > {PROJECT}/.env")
        node.put(ROOT / ".env", f"{PROJECT}/.env")
        node.run(f"chmod 600 {PROJECT}/.env")
    node.run(f"cd {PROJECT} && {COMPOSE} up -d --wait")
    remote = _outliving_remote(config, cham, node)
    state = read_state()
    state["dvc_remote"] = remote
    write_state(state)
    target = (f"outputs will be pushed to the DVC remote '{remote['name']}' ({remote['where']})"
              if remote["name"] else remote["where"])
    print(f"remote: configured: {PROJECT} at {commit[:12]}, secrets in place, service stack up; {target}")


def _outliving_remote(config: dict, cham: dict, node: Runner) -> dict[str, str]:
    """Set up the DVC remote a run on the node pushes to, here and on the node (see object_store)."""
    import object_store
    import storage

    storage_cfg = config["storage"]
    name = object_store.remote_name(config)
    if name == "shared":  # storage.mode s3 outside the node: both sides take its keys from .env
        return {"name": name, "where": f"s3://{storage_cfg['bucket']}/dvc at {storage_cfg['endpoint']}"}
    check_credentials(cham)
    endpoint = object_store.s3_endpoint()
    if endpoint is None:
        return {"name": "", "where": f"{cham['site']} lists no object store: the outputs stay on the node "
                "until collect copies them over SSH (storage.mode: s3 with an endpoint both machines "
                "reach pushes them off the node)"}
    keys = object_store.ec2_keys()
    bucket = storage_cfg["bucket"]
    if object_store.ensure_bucket(endpoint, bucket, keys):
        print(f"remote: created bucket '{bucket}' in {cham['site']}'s object store ({endpoint})")
    settings = object_store.remote_settings(endpoint, bucket, keys)
    storage.make_private_config(ROOT)
    storage._ensure(ROOT, object_store.CHAMELEON, settings, local=True)
    with tempfile.TemporaryDirectory() as tmp:
        node_file = Path(tmp) / "config.local"
        node_file.touch(mode=0o600)
        node_file.write_text(object_store.config_local(settings))
        node.run(f"umask 077 && : > {PROJECT}/.dvc/config.local")
        node.put(node_file, f"{PROJECT}/.dvc/config.local")
    node.run(f"chmod 600 {PROJECT}/.dvc/config.local")
    return {"name": name, "where": f"s3://{bucket}/dvc in {cham['site']}'s object store at {endpoint}"}


def _in_container(command: str = "") -> str:
    return f"cd {PROJECT} && {COMPOSE} --profile train run --rm train {command}".rstrip()


def remote_run(config: dict) -> None:
    """The pipeline on the node, then what must outlive the node: the MLflow run exported to a
    folder (collect imports it here) and the DVC outputs pushed to the outliving remote."""
    import object_store

    settings(config)
    state = read_state()
    remote = state.get("dvc_remote")
    if remote is None:
        raise ChameleonError("remote: the node is not configured; run `snakemake -c1 configure` first")
    node = runner()
    started = time.time()
    node.run(_in_container())
    node.run(_in_container("python workflow/scripts/run_copy.py export"))
    with tempfile.TemporaryDirectory() as tmp:
        node.get(f"{PROJECT}/results/run.json", Path(tmp) / "run.json")
        run = json.loads((Path(tmp) / "run.json").read_text())
    on_node_only = [f"MLflow run {run['run_id']}", "results/", "dvc.lock"]
    record = {"commit": _git("rev-parse", "HEAD"), "run_id": run["run_id"], "collected": False,
              "started_at": _iso(started), "finished_at": _iso(time.time()), "pushed": False,
              "unsaved": [*on_node_only, "models, data/raw, data/prepared (not pushed)"]}
    state["remote_run"] = record
    write_state(state)  # from here on, teardown refuses until collect brings everything back
    if not remote["name"]:
        print(f"remote: run finished on the node: MLflow run {run['run_id']} exported; the DVC outputs "
              "stay on the node until `snakemake -c1 collect` copies them over SSH")
        return
    try:
        checksums = " ".join(f"{k}={v}" for k, v in object_store.CHECKSUMS.items())
        node.run(_in_container(f"env {checksums} dvc push --remote {remote['name']}"))
    except ChameleonError as error:
        raise ChameleonError(f"{error}; the outputs stay on the node only: `snakemake -c1 collect` copies "
                             "them over SSH instead") from None
    record.update(pushed=True, unsaved=on_node_only)
    write_state(state)
    print(f"remote: run finished on the node: MLflow run {run['run_id']} exported, DVC outputs pushed to "
          f"'{remote['name']}' ({remote['where']}); next: `snakemake -c1 collect`")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def collect(config: dict) -> dict:
    """Bring a finished remote run here: results and dvc.lock over SSH, the DVC outputs from the
    remote they were pushed to (over SSH when the push failed), the MLflow run into this project's
    store; then `dvc commit` and the state says it is collected."""
    import object_store

    settings(config)
    state = read_state()
    record = state.get("remote_run")
    if not record:
        raise ChameleonError("remote: no finished remote run to collect; run `snakemake -c1 remote_run`")
    node = runner()
    for rel in ("results", "dvc.lock"):
        _fetch(node, rel)
    if record.get("pushed"):
        remote = state["dvc_remote"]["name"]
        proc = subprocess.run(["dvc", "pull", "--remote", remote, "--force"], cwd=ROOT,
                              capture_output=True, text=True, env={**os.environ, **object_store.CHECKSUMS})
        if proc.returncode != 0:
            from storage import last_line

            raise ChameleonError(f"remote: dvc pull from '{remote}' failed ({last_line(proc)}); "
                                 "nothing is marked collected, rerun `snakemake -c1 collect`")
        how = f"pulled from the DVC remote '{remote}'"
    else:
        for rel in ("models", "data/raw", "data/prepared"):
            _fetch(node, rel)
        how = "copied over SSH (they were not pushed)"
    ids = _import_run(config, record)
    sys.path.insert(0, str(Path(__file__).parent))
    from stages import commit_complete_stages, date_in_pipeline_order

    date_in_pipeline_order(ROOT)  # what came from the node is current here: nothing to redo
    commit_complete_stages(ROOT)
    record.update(collected=True, collected_at=_iso(time.time()), local_run_id=ids["run_id"], unsaved=[])
    write_state(state)
    metrics = json.loads((ROOT / "results" / "metrics.json").read_text())
    print(f"remote: collected: results, dvc.lock, DVC outputs {how}; MLflow run {record['run_id']} is run "
          f"{ids['run_id']} in {ids['tracking_uri']}; accuracy {metrics.get('accuracy')}")
    return ids


def _fetch(node: Runner, rel: str) -> None:
    """Copy a file or folder from the node, replacing the local one only once it has arrived."""
    target = ROOT / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        arrived = Path(tmp) / target.name
        node.get(f"{PROJECT}/{rel}", arrived)
        if target.is_dir():
            shutil.rmtree(target)
        arrived.replace(target)


def _import_run(config: dict, record: dict) -> dict:
    """The node's MLflow run in this project's store; a server outside the node already has it."""
    import object_store
    import run_copy
    from _step import write_json

    tracking = config["tracking"]
    if tracking["mode"] == "server" and not object_store.node_local(tracking["server_uri"]):
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking["server_uri"]).get_run(record["run_id"])  # fails loudly if it is not there
        return json.loads((ROOT / "results" / "run.json").read_text())
    ids = run_copy.import_run(ROOT, ROOT / run_copy.EXPORT)
    write_json("results/run.json", ids)
    return ids


def main(argv: list[str]) -> int:
    from _step import load_config, log_to

    config = load_config()
    actions = {"configure": configure, "remote_run": remote_run, "collect": collect}
    if not argv or argv[0] not in actions:
        raise ChameleonError(f"remote: accepted actions: {', '.join(actions)}")
    log_to(argv[0])  # the rule's log: (workflow/rules/provision.smk); the node's output included
    actions[argv[0]](config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
