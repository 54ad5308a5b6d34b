"""Work on the provisioned node over SSH: configure it, run the pipeline there, collect the results.

    python workflow/scripts/remote.py configure    # Docker (+ GPU runtime), repo at this commit, .env, stack
    python workflow/scripts/remote.py remote_run   # the pipeline in the training container, streamed
    python workflow/scripts/remote.py collect      # metrics, DVC-tracked outputs and the MLflow run id

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
from pathlib import Path

from chameleon import ROOT, ChameleonError, read_state, settings

PROJECT = "project"  # the clone's folder in the node's home
SETUP = Path(__file__).with_name("node_setup.sh")
COLLECTED = ("results", "models", "data/raw", "data/prepared", "dvc.lock")
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
    print(f"remote: configured: {PROJECT} at {commit[:12]}, secrets in place, service stack up")


def remote_run(config: dict) -> None:
    settings(config)
    runner().run(f"cd {PROJECT} && {COMPOSE} --profile train run --rm train")


def collect(config: dict) -> dict:
    settings(config)
    node = runner()
    for rel in COLLECTED:
        target = ROOT / rel
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        node.get(f"{PROJECT}/{rel}", target)
    sys.path.insert(0, str(Path(__file__).parent))
    from stages import commit_complete_stages

    commit_complete_stages(ROOT)
    run = json.loads((ROOT / "results" / "run.json").read_text())
    metrics = json.loads((ROOT / "results" / "metrics.json").read_text())
    print(f"remote: collected results, models and dvc.lock; MLflow run {run['run_id']} "
          f"({run['tracking_uri']}); accuracy {metrics.get('accuracy')}")
    return run


def main(argv: list[str]) -> int:
    from _step import load_config

    config = load_config()
    actions = {"configure": configure, "remote_run": remote_run, "collect": collect}
    if not argv or argv[0] not in actions:
        raise ChameleonError(f"remote: accepted actions: {', '.join(actions)}")
    actions[argv[0]](config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
