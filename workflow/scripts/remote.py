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

Several nodes (chameleon.count = train.distributed.nnodes > 1): configure prepares each the same
way; remote_run asks the first node (a dry run in the training container) whether train will run:
if not (up to date, e.g. a rerun after a failed export or push), no other node is started, as
torchrun would not run for them to join. Otherwise it starts every other node first, in the
background with its own log (it prepares the data from the same pinned inputs, then `launch.py
--node-rank I --master-addr <first node>` joins torchrun's rendezvous), then runs the pipeline on
the first node (rank 0, which writes every result) with REPROSTACK_MASTER_ADDR set to its own
private address. Once that pipeline has succeeded the run is recorded (teardown refuses from then
on); a worker that then ends non-zero (or runs on past WORKER_GRACE_S, and is stopped) is a
warning, named and kept in the record, not a failure: the export and push go on. Their logs come
home as logs/nodes/<name>.log.

Commands go through a runner: SSH to cc@<floating IP> (the real path; the other nodes through it
as a jump host, at their private addresses), or, for tests, a local shell in a folder that stands
in for the node's home (REPROSTACK_RUNNER=local, REPROSTACK_NODE_ROOT=folder for the first node,
folder-1, folder-2, ... for the others). The repository travels as a git bundle of the current
commit (no public remote needed); the secrets travel as a file copy (never on a command line,
never echoed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from chameleon import ROOT, ChameleonError, check_credentials, read_state, servers, settings, write_state

PROJECT = "project"  # the clone's folder in the node's home
SETUP = Path(__file__).with_name("node_setup.sh")
# From the project root. Compose looks for .env in the compose file's folder (docker/), so the
# project's .env is named; --project-directory would move the file's relative paths too.
COMPOSE = "docker compose -f docker/compose.yaml --env-file .env"
# A worker node's run, in its project: output, then exit status once it has ended.
NODE_LOG, NODE_EXIT = "logs/node_run.log", "logs/node_run.exit"
NODE_LOGS = Path("logs") / "nodes"  # here: each worker's log, as <name>.log
WORKER_GRACE_S = 600.0  # once the first node is done, how long a worker may take to end


class Runner:
    def run(self, command: str) -> None:
        raise NotImplementedError

    def status(self, command: str) -> int:
        """The command's exit status; a failure is an answer here, not an error."""
        raise NotImplementedError

    def output(self, command: str) -> tuple[int, str]:
        """The command's exit status and what it said (stdout and stderr together)."""
        raise NotImplementedError

    def wait_ready(self, timeout_s: float) -> None:
        """Until the node answers (a node behind the jump host may still be booting)."""

    def put(self, local: Path, remote: str) -> None:
        raise NotImplementedError

    def get(self, remote: str, local: Path) -> None:
        raise NotImplementedError


class SSHRunner(Runner):
    """ssh/scp to cc@address; host keys are accepted on first use (a fresh node), then pinned. A node
    without a floating IP is reached through `jump` (the first node's): ProxyJump's own connection
    would not take these options, so the jump is a ProxyCommand with them."""

    def __init__(self, address: str, user: str = "cc", jump: str | None = None) -> None:
        self.target = f"{user}@{address}"
        self.options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                        "-o", "ConnectTimeout=20"]
        if jump:
            through = shlex.join(["ssh", *self.options, "-W", "%h:%p", f"{user}@{jump}"])
            self.options += ["-o", f"ProxyCommand={through}"]

    def run(self, command: str) -> None:
        _check(subprocess.run(["ssh", *self.options, self.target, command]), command)

    def status(self, command: str) -> int:
        return subprocess.run(["ssh", *self.options, self.target, command]).returncode

    def output(self, command: str) -> tuple[int, str]:
        proc = subprocess.run(["ssh", *self.options, self.target, command], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc.returncode, proc.stdout

    def wait_ready(self, timeout_s: float) -> None:
        start = time.monotonic()
        while subprocess.run(["ssh", *self.options, self.target, "true"], capture_output=True).returncode:
            if time.monotonic() - start > timeout_s:
                raise ChameleonError(f"remote: {self.target} did not answer SSH after {timeout_s:.0f} s")
            time.sleep(10)

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
        _check(self._bash(command), command)

    def status(self, command: str) -> int:
        return self._bash(command).returncode

    def output(self, command: str) -> tuple[int, str]:
        proc = self._bash(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
        return proc.returncode, proc.stdout

    def _bash(self, command: str, **capture: object) -> subprocess.CompletedProcess:
        home = {**os.environ, "HOME": str(self.home)}
        return subprocess.run(["bash", "-c", command], cwd=self.home, env=home, **capture)

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


class Node(NamedTuple):
    """A leased node as the commands see it: rank 0 is the first (the floating IP's)."""

    rank: int
    name: str
    address: str  # private (sharednet1): where the other nodes reach it
    runner: Runner


def cluster() -> list[Node]:
    """Every node the state file names, first node first, each with its runner."""
    state = read_state()
    listed = servers(state) or [{}]
    if os.environ.get("REPROSTACK_RUNNER") == "local":
        root = os.environ["REPROSTACK_NODE_ROOT"]
        homes = [Path(root if rank == 0 else f"{root}-{rank}") for rank in range(len(listed))]
        runners: list[Runner] = [LocalRunner(home) for home in homes]
    else:
        if not state.get("floating_ip") or not servers(state):
            raise ChameleonError("remote: no node yet; run `snakemake -c1 provision` first")
        jump = state["floating_ip"]
        missing = [n.get("id") for n in listed[1:] if not n.get("private_address")]
        if missing:
            raise ChameleonError(f"remote: no private address recorded for server(s) {', '.join(missing)}; "
                                 "run `snakemake -c1 provision` again")
        runners = [SSHRunner(jump)] + [SSHRunner(n["private_address"], jump=jump) for n in listed[1:]]
    return [Node(rank, n.get("name") or f"node-{rank}", n.get("private_address") or "", runner)
            for rank, (n, runner) in enumerate(zip(listed, runners, strict=True))]


def runner() -> Runner:
    """The first node's runner: the one that runs the pipeline and holds its results."""
    return cluster()[0].runner


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def configure(config: dict) -> None:
    """Every node the same way: Docker (+ GPU runtime), the repository at this commit, .env, the
    service stack; with several nodes, each node's firewall also trusts the others (bare metal)."""
    cham = settings(config)
    nodes = cluster()
    if cham["kind"] == "kvm":
        # The security group made by provision is the firewall on KVM (it also lets the nodes reach
        # each other): firewalld is not asked to open anything, so nothing depends on it there.
        print("remote: KVM: the security group lets in tcp "
              + ", ".join(map(str, cham["ingress_ports"])) + "; firewalld is left alone")
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("remote: note: uncommitted changes stay here; the node gets commit " + commit[:12])
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "repo.bundle"
        _git("bundle", "create", str(bundle), "HEAD")
        for node in nodes:
            if len(nodes) > 1:
                print(f"remote: configuring node {node.name} (rank {node.rank}, {node.address})")
            node.runner.wait_ready(cham["ssh_timeout_minutes"] * 60)
            peers = [other.address for other in nodes if other is not node]
            _configure_node(cham, node.runner, bundle, commit, [] if cham["kind"] == "kvm" else peers)
    remote = _outliving_remote(config, cham, [node.runner for node in nodes])
    state = read_state()
    state["dvc_remote"] = remote
    write_state(state)
    target = (f"outputs will be pushed to the DVC remote '{remote['name']}' ({remote['where']})"
              if remote["name"] else remote["where"])
    where = f" on {len(nodes)} nodes" if len(nodes) > 1 else ""
    print(f"remote: configured{where}: {PROJECT} at {commit[:12]}, secrets in place, service stack up; "
          + target)


def _configure_node(cham: dict, node: Runner, bundle: Path, commit: str, peers: list[str]) -> None:
    node.put(SETUP, "node_setup.sh")
    extra_ports = "" if cham["kind"] == "kvm" else " ".join(
        str(p) for p in cham["ingress_ports"] if p != 22)  # firewalld already allows SSH
    trusted = f"REPROSTACK_PEERS={shlex.quote(' '.join(peers))} " if peers else ""
    node.run(f"{trusted}bash node_setup.sh {cham['accelerator']} {extra_ports}".rstrip())
    node.put(bundle, "repo.bundle")
    node.run(f"if [ -d {PROJECT}/.git ]; then git -C {PROJECT} fetch -q ../repo.bundle HEAD; "
             f"else git clone -q repo.bundle {PROJECT}; fi && git -C {PROJECT} checkout -q --detach {commit}")
    if (ROOT / ".env").exists():
        node.run(f"umask 077 && : > {PROJECT}/.env")
        node.put(ROOT / ".env", f"{PROJECT}/.env")
        node.run(f"chmod 600 {PROJECT}/.env")
    node.run(f"cd {PROJECT} && {COMPOSE} up -d --wait")


def _outliving_remote(config: dict, cham: dict, nodes: list[Runner]) -> dict[str, str]:
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
        for node in nodes:  # every node: a worker may pull the pinned raw data from there
            node.run(f"umask 077 && : > {PROJECT}/.dvc/config.local")
            node.put(node_file, f"{PROJECT}/.dvc/config.local")
            node.run(f"chmod 600 {PROJECT}/.dvc/config.local")
    return {"name": name, "where": f"s3://{bucket}/dvc in {cham['site']}'s object store at {endpoint}"}


def _in_container(command: str = "", env: dict[str, str] | None = None, name: str = "") -> str:
    """The training container's command line, from the node's home (options before `--rm train`)."""
    options = "".join(f" -e {key}={shlex.quote(value)}" for key, value in (env or {}).items())
    options += f" --name {name}" if name else ""
    return f"cd {PROJECT} && {COMPOSE} --profile train run{options} --rm train {command}".rstrip()


def _rendezvous(rank: int, master: str) -> dict[str, str]:
    return {"REPROSTACK_NODE_RANK": str(rank), "REPROSTACK_MASTER_ADDR": master}


def _worker_line(rank: int, master: str) -> str:
    """What a worker node runs in its container: the prepared data from the same pinned inputs (the
    pipeline up to its prepare step), then its half of torchrun (launch.py)."""
    joins = ["python", "workflow/scripts/launch.py", "--node-rank", str(rank), "--master-addr", master]
    return f"snakemake --cores all prepare && {shlex.join(joins)}"


def _start_worker(node: Node, master: str) -> str:
    """Start the worker's run detached on its node (it outlives the SSH session), output to NODE_LOG
    and its exit status to NODE_EXIT; returns the container's command line, as started."""
    line = _in_container(f"bash -c {shlex.quote(_worker_line(node.rank, master))}",
                         _rendezvous(node.rank, master), _container_name(node))
    container = line.removeprefix(f"cd {PROJECT} && ")
    node.runner.status(f"docker rm -f {_container_name(node)} >/dev/null 2>&1")  # one left by a run cut short
    node.runner.run(
        f"cd {PROJECT} && mkdir -p logs && rm -f {NODE_EXIT} && "
        f"nohup bash -c {shlex.quote(f'{container}; echo $? > {NODE_EXIT}')} > {NODE_LOG} 2>&1 < /dev/null &"
    )
    return container


def _container_name(node: Node) -> str:
    return f"reprostack-rank{node.rank}"


def _exit_status(node: Node) -> int | None:
    """A worker's exit status once its run has ended; None while it runs."""
    if node.runner.status(f"test -s {PROJECT}/{NODE_EXIT}") != 0:
        return None
    return node.runner.status(f"exit $(cat {PROJECT}/{NODE_EXIT})")


def fetch_node_logs(nodes: list[Node]) -> list[Path]:
    """Each worker's log here, as logs/nodes/<name>.log (the first node's is logs/remote_run.log)."""
    fetched = []
    for node in nodes[1:]:
        target = ROOT / NODE_LOGS / f"{node.name}.log"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            node.runner.get(f"{PROJECT}/{NODE_LOG}", target)
        except (ChameleonError, OSError):
            print(f"remote: note: no log from node {node.name} yet")
            continue
        fetched.append(target)
    return fetched


def _failed(node: Node, status: int) -> str:
    log = (NODE_LOGS / f"{node.name}.log").as_posix()
    return f"node {node.name} (rank {node.rank}, {node.address}) failed (exit {status}); its log: {log}"


def _late(node: Node, what: str) -> str:
    """A worker that did not end cleanly after the first node's pipeline had succeeded: a warning,
    not a failure (rank 0 wrote every result, and its run could only finish once every collective
    had completed), e.g. a worker cut short in torchrun's exit barrier."""
    log = (NODE_LOGS / f"{node.name}.log").as_posix()
    return (f"node {node.name} (rank {node.rank}, {node.address}) {what} after the first node's run had "
            f"succeeded; the run is kept; its log: {log}")


def _end_workers(nodes: list[Node], workers: list[Node], poll_s: float) -> list[str]:
    """Once the first node's pipeline has succeeded: wait for each started worker to end (at most
    WORKER_GRACE_S; one still running then is stopped) and bring their logs here. A worker that
    failed is a warning, printed and returned; it never undoes the run on the first node."""
    warnings: list[str] = []

    def warn(node: Node, what: str) -> None:
        warnings.append(_late(node, what))
        print(f"remote: warning: {warnings[-1]}", flush=True)

    pending, since = list(workers), time.monotonic()
    try:
        while pending:
            for node in list(pending):
                try:
                    status = _exit_status(node)
                except (ChameleonError, OSError) as error:
                    pending.remove(node)
                    warn(node, f"could not be asked for its exit status ({error})")
                    continue
                if status is None:
                    continue
                pending.remove(node)
                if status != 0:
                    warn(node, f"ended with exit {status}")
                else:
                    print(f"remote: node {node.name} (rank {node.rank}) finished", flush=True)
            if pending and time.monotonic() - since > WORKER_GRACE_S:
                for node in pending:
                    node.runner.status(f"docker rm -f {_container_name(node)} >/dev/null 2>&1")
                    warn(node, f"was still running {WORKER_GRACE_S:.0f} s later and was stopped")
                pending = []
            if pending:
                time.sleep(poll_s)
    finally:
        if workers:
            fetch_node_logs([nodes[0], *workers])
    return warnings


def _stop_workers(workers: list[Node]) -> str:
    """After the first node failed: a worker that failed first is the cause; the rest are stopped
    (else they wait out torchrun's rendezvous)."""
    cause = ""
    for node in workers:
        status = _exit_status(node)
        if status is None:
            node.runner.status(f"docker rm -f {_container_name(node)} >/dev/null 2>&1")
        elif status != 0 and not cause:
            cause = f"; {_failed(node, status)}"
    return cause


def _train_check_line(master: str) -> str:
    """The dry run that says whether the first node's pipeline will run train (and so torchrun, which
    the workers join), in the container and with the environment the pipeline itself gets."""
    return _in_container("snakemake --cores all --dry-run --quiet rules", _rendezvous(0, master))


def _train_pending(dry_run: str) -> bool:
    """Whether a `snakemake --dry-run --quiet rules` summary plans the train job (its job stats table has a
    `train <count>` row; "Nothing to be done" has none)."""
    return re.search(r"^\s*train\s+\d+\s*$", dry_run, re.MULTILINE) is not None


def _ask_train(first: Node, master: str) -> dict[str, object]:
    """Ask the first node whether train will run; what was asked and the answer, for the record."""
    line = _train_check_line(master)
    status, said = first.runner.output(line)
    if status != 0:
        last = (said.strip().splitlines() or ["no output"])[-1][:200]
        raise ChameleonError(f"remote: the dry run on node {first.name} (rank 0) failed (exit {status}): "
                             f"{last}; no node was started")
    return {"node": first.name, "command": line.removeprefix(f"cd {PROJECT} && "),
            "train_runs": _train_pending(said)}


class Started(NamedTuple):
    """What _run_nodes ran: each node's command line, the workers still to wait for, and the
    train check (several nodes) with the nodes it left idle."""

    ran: list[dict[str, object]]
    workers: list[Node]
    train_check: dict[str, object] | None = None
    skipped: list[dict[str, object]] | None = None


def _run_nodes(nodes: list[Node]) -> Started:
    """Several nodes: ask the first whether train will run; if so, workers first (in the background),
    then the pipeline on the first node. Returns once the first node's pipeline has succeeded (the
    workers may still be ending: see _end_workers); raises if it failed, the workers stopped."""
    if len(nodes) == 1:
        line = _in_container()
        nodes[0].runner.run(line)
        only = {"name": nodes[0].name, "rank": 0, "command": line.removeprefix(f"cd {PROJECT} && ")}
        return Started([only], [])
    master = nodes[0].address
    check = _ask_train(nodes[0], master)
    ran, workers, skipped = [], [], []
    if check["train_runs"]:
        for node in nodes[1:]:
            line = _start_worker(node, master)
            print(f"remote: node {node.name} (rank {node.rank}) started: {line}", flush=True)
            ran.append({"name": node.name, "rank": node.rank, "command": line, "master_addr": master})
            workers.append(node)
    else:
        why = f"train is up to date on node {nodes[0].name}: torchrun does not run, nothing to join"
        skipped = [{"name": node.name, "rank": node.rank, "why": why} for node in nodes[1:]]
        names = ", ".join(f"{node.name} (rank {node.rank})" for node in nodes[1:])
        print(f"remote: {why}; not started: {names}", flush=True)
    first = _in_container(env=_rendezvous(0, master))
    print(f"remote: node {nodes[0].name} (rank 0, rendezvous at {master}) runs the pipeline: "
          + first.removeprefix(f"cd {PROJECT} && "), flush=True)
    try:
        nodes[0].runner.run(first)
    except ChameleonError as error:
        cause = _stop_workers(workers)
        if workers:
            fetch_node_logs([nodes[0], *workers])
        raise ChameleonError(f"{error} (node {nodes[0].name}, rank 0){cause}") from None
    first_ran = {"name": nodes[0].name, "rank": 0, "command": first.removeprefix(f"cd {PROJECT} && "),
                 "master_addr": master}
    return Started([first_ran, *ran], workers, check, skipped)


def remote_run(config: dict) -> None:
    """The pipeline on the node (on several: see the module's docstring), then what must outlive
    the node: the MLflow run exported to a folder (collect imports it here) and the DVC outputs
    pushed to the outliving remote.

    The state file's `remote_run` is written the moment the first node's pipeline has succeeded
    (`provisional` until the export ran), so teardown refuses from then on: a worker that fails
    afterwards, or an export that fails, cannot get a finished run released without --force."""
    import launch
    import object_store

    cham = settings(config)
    state = read_state()
    remote = state.get("dvc_remote")
    if remote is None:
        raise ChameleonError("remote: the node is not configured; run `snakemake -c1 configure` first")
    nodes = cluster()
    nnodes = int(launch.shape(config["train"])["nnodes"])
    if len(nodes) != nnodes:  # provisioned for another config
        raise ChameleonError(f"remote: the state file names {len(nodes)} node(s), train.distributed.nnodes "
                             f"is {nnodes}; run `snakemake -c1 teardown`, then provision again with "
                             f"chameleon.count: {nnodes}")
    node = nodes[0].runner
    started = time.time()
    run_nodes = _run_nodes(nodes)
    not_pushed = "models, data/raw, data/prepared (not pushed)"
    on_node = ["results/", "dvc.lock", not_pushed]
    record: dict[str, Any] = {
        "commit": _git("rev-parse", "HEAD"), "run_id": None, "collected": False, "provisional": True,
        "started_at": _iso(started), "finished_at": _iso(time.time()), "pushed": False,
        "unsaved": ["the MLflow run (not exported)", *on_node], "nodes": run_nodes.ran}
    if run_nodes.train_check:
        record["train_check"] = run_nodes.train_check
    if run_nodes.skipped:
        record["skipped_nodes"] = run_nodes.skipped
    state["remote_run"] = record
    write_state(state)  # from here on, teardown refuses until collect brings everything back
    warnings = _end_workers(nodes, run_nodes.workers, cham["poll_seconds"])
    if warnings:
        record["warnings"] = warnings
        write_state(state)
    with contextlib.suppress(ChameleonError, OSError, ValueError, KeyError):  # named if it can be
        run_id = _node_run_id(node)
        record.update(run_id=run_id, unsaved=[f"MLflow run {run_id} (not exported)", *on_node])
        write_state(state)
    try:
        node.run(_in_container("python workflow/scripts/run_copy.py export"))
    except ChameleonError as error:
        raise ChameleonError(f"{error}; the run is kept on node {nodes[0].name} (teardown refuses): run "
                             "`snakemake -c1 remote_run` again to export and push it") from None
    run_id = _node_run_id(node)
    on_node_only = [f"MLflow run {run_id}", "results/", "dvc.lock"]
    record.update(run_id=run_id, unsaved=[*on_node_only, not_pushed])
    record.pop("provisional")
    write_state(state)
    noted = (f" ({len(warnings)} warning(s) about the other nodes, kept in the state file's remote_run)"
             if warnings else "")
    if not remote["name"]:
        print(f"remote: run finished on the node: MLflow run {run_id} exported; the DVC outputs "
              f"stay on the node until `snakemake -c1 collect` copies them over SSH{noted}")
        return
    try:
        checksums = " ".join(f"{k}={v}" for k, v in object_store.CHECKSUMS.items())
        node.run(_in_container(f"env {checksums} dvc push --remote {remote['name']}"))
    except ChameleonError as error:
        raise ChameleonError(f"{error}; the outputs stay on the node only: `snakemake -c1 collect` copies "
                             "them over SSH instead") from None
    record.update(pushed=True, unsaved=on_node_only)
    write_state(state)
    print(f"remote: run finished on the node: MLflow run {run_id} exported, DVC outputs pushed to "
          f"'{remote['name']}' ({remote['where']}); next: `snakemake -c1 collect`{noted}")


def _node_run_id(node: Runner) -> str:
    """The MLflow run the first node's pipeline made (its results/run.json)."""
    with tempfile.TemporaryDirectory() as tmp:
        node.get(f"{PROJECT}/results/run.json", Path(tmp) / "run.json")
        return json.loads((Path(tmp) / "run.json").read_text())["run_id"]


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
    if record.get("provisional"):
        raise ChameleonError("remote: the last remote_run stopped after the pipeline, before exporting the "
                             "MLflow run (the run is kept on the node); run `snakemake -c1 remote_run` again "
                             "(it exports and pushes), then collect")
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
    logs = fetch_node_logs(cluster())
    sys.path.insert(0, str(Path(__file__).parent))
    from stages import commit_complete_stages, date_in_pipeline_order

    date_in_pipeline_order(ROOT)  # what came from the node is current here: nothing to redo
    commit_complete_stages(ROOT)
    record.update(collected=True, collected_at=_iso(time.time()), local_run_id=ids["run_id"], unsaved=[])
    write_state(state)
    metrics = json.loads((ROOT / "results" / "metrics.json").read_text())
    print(f"remote: collected: results, dvc.lock, DVC outputs {how}; MLflow run {record['run_id']} is run "
          f"{ids['run_id']} in {ids['tracking_uri']}; accuracy {metrics.get('accuracy')}")
    if logs:
        print("remote: the other nodes' logs: " + ", ".join(log.relative_to(ROOT).as_posix() for log in logs))
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
