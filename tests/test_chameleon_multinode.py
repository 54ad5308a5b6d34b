"""Multi-node on (fake) Chameleon: chameleon.count: 2 with train.distributed.nnodes: 2 leases two
nodes on one reservation, gives the first the only floating IP, configures both, starts the second
node's half of torchrun (launch.py, rank 1) before the pipeline on the first (rank 0), both with the
first node's private address as the rendezvous, and tears both down.

Each node is a local folder (its home) driven through the command runner: `node` for the first,
`node-1` for the second. `docker` there is a stub that records what each node's container would
run and stands in for it (the first node's pipeline writes the run record remote_run reads; its
dry run plans train unless the node's home holds `train-up-to-date`). Files in a node's home make
its parts fail: `worker-exit` (a worker's exit status), `export-exit` (the MLflow export's)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, generate
from fake_chameleon import FakeChameleon
from test_chameleon import KEY, sent, state

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
COMPOSE = "docker compose -f docker/compose.yaml --env-file .env"
DOCKER_STUB = """#!/usr/bin/env bash
echo "$(basename "$HOME") docker $*" >> "$HOME/../docker-calls.log"
args=("$@")
for i in "${!args[@]}"; do  # `compose ... run [options] --rm train [command]`: what the container runs
  if [ "${args[$i]}" = "--rm" ] && [ "${args[$((i + 1))]}" = "train" ]; then
    rest=("${args[@]:$((i + 2))}")
    if [ ${#rest[@]} -eq 0 ]; then  # the first node's pipeline: its run record
      mkdir -p results && echo '{"run_id": "run-on-rank-0"}' > results/run.json
    elif [[ "${rest[*]}" == *launch.py* ]]; then  # a worker's half of torchrun
      echo "worker ran: ${rest[*]}"
      exit "$(cat "$HOME/worker-exit" 2>/dev/null || echo 0)"
    elif [[ "${rest[*]}" == "snakemake "*--dry-run* ]]; then  # as Snakemake 9 answers --quiet rules
      echo "Building DAG of jobs..." >&2
      if [ -e "$HOME/train-up-to-date" ]; then
        echo "Nothing to be done (all requested files are present and up to date)." >&2
      else
        printf 'Job stats:\njob         count\n--------  -------\ntrain           1\n' >&2
        printf 'evaluate        1\nall             1\ntotal           3\n\n' >&2
        printf 'Reasons:\n    forced:\n        train\n' >&2
      fi
    elif [[ "${rest[*]}" == *"run_copy.py export"* ]]; then
      exit "$(cat "$HOME/export-exit" 2>/dev/null || echo 0)"
    fi
    exit 0
  fi
done
[ "${1:-}" != "--version" ] || echo "Docker version 27.0.0, build stub"
"""
FIREWALL_STUB = '#!/usr/bin/env bash\necho "firewall-cmd $*" >> "$HOME/firewall.log"\n'


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(password="right-password", capacity={"compute_skylake": 2}) as server:
        yield server


def two_nodes(tmp_path: Path, env: dict[str, str], fake: FakeChameleon) -> Project:
    """A pytorch project that trains on two nodes, on the fake site, with stubs for the nodes' tools."""
    fake.reset()
    fake.add_keypair(KEY)
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    for name, text in (("docker", DOCKER_STUB), ("firewall-cmd", FIREWALL_STUB),
                       ("sudo", '#!/usr/bin/env bash\nexec "$@"\n')):
        (stub / name).write_text(text)
        (stub / name).chmod(0o755)
    env = {k: v for k, v in env.items() if not k.startswith("OS_")}
    env.update(fake.os_env(), NO_PROXY="127.0.0.1,localhost", REPROSTACK_RUNNER="local",
               REPROSTACK_NODE_ROOT=str(tmp_path / "node"), PATH=f"{stub}:{env['PATH']}")
    project = generate(tmp_path, "paper", env, "framework=pytorch", "chameleon_site=CHI@UC",
                       "node_type=compute_skylake")
    project.set_config("chameleon.key_name", KEY)
    project.set_config("chameleon.poll_seconds", 0.1)
    project.set_config("chameleon.count", 2)
    project.set_config("train.distributed", {"nnodes": 2, "nproc_per_node": 1, "backend": "gloo",
                                             "master_port": 29511})
    project.run("git", "commit", "-qam", "two nodes")
    return project


def calls(tmp_path: Path, home: str) -> list[str]:
    """The docker command lines run on one node (by its home folder's name)."""
    log = tmp_path / "docker-calls.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == home]


def cham(project: Project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python", "workflow/scripts/chameleon.py", *args], cwd=project.path,
                          env=project.env, stdin=subprocess.DEVNULL, capture_output=True, text=True)


def test_two_nodes_leased_configured_run_and_torn_down(
    tmp_path: Path, env: dict[str, str], fake: FakeChameleon
) -> None:
    project = two_nodes(tmp_path, env, fake)
    plan = project.run("snakemake", "-c1", "plan").stdout
    assert "2 x compute_skylake bare-metal node(s) + 1 floating IP" in plan
    assert "the other 1 are reached through it (ssh -J)" in plan

    # provision: one lease for both, one server per node on its reservation, one floating IP.
    provisioned = project.run("snakemake", "-c1", "provision")
    created = state(project)
    [lease] = fake.leases()
    [hosts] = [r for r in lease["reservations"] if r["resource_type"] == "physical:host"]
    assert hosts["min"] == 2 and created["lease_id"] == lease["id"]
    bodies = sent(fake, "POST", "/servers")
    assert [(b.get("os:scheduler_hints") or b.get("OS-SCH-HNT:scheduler_hints")) for b in bodies] == [
        {"reservation": hosts["id"]}] * 2
    names = [f"{created['lease_name']}-node-0", f"{created['lease_name']}-node-1"]
    assert [b["server"]["name"] for b in bodies] == names
    servers = {s["id"]: s for s in fake.servers()}
    fixed = {p["device_id"]: p["fixed_ips"][0]["ip_address"] for p in fake.ports()}
    assert [n["name"] for n in created["servers"]] == names and set(servers) == {
        n["id"] for n in created["servers"]}
    assert [n["private_address"] for n in created["servers"]] == [fixed[n["id"]] for n in created["servers"]]
    first, second = created["servers"]
    [fip] = fake.floating_ips()
    [port] = [p for p in fake.ports() if p["id"] == fip["port_id"]]
    assert (fip["floating_ip_address"], port["device_id"]) == (created["floating_ip"], first["id"])
    said = provisioned.stdout + provisioned.stderr
    assert (f"node 1: {names[1]} at {second['private_address']}: ssh -J cc@{created['floating_ip']} "
            f"cc@{second['private_address']}") in said
    again = cham(project, "provision")
    assert again.returncode == 0, again.stderr
    assert state(project) == created and len(sent(fake, "POST", "/servers")) == 2, "a rerun creates nothing"

    # configure: each node the same way; each node's firewall trusts the other.
    project.run("snakemake", "-c1", "configure")
    head = project.run("git", "rev-parse", "HEAD").stdout.strip()
    homes = {"node": first, "node-1": second}
    for home, other in (("node", second), ("node-1", first)):
        clone = tmp_path / home / "project"
        assert project.run("git", "-C", str(clone), "rev-parse", "HEAD").stdout.strip() == head
        assert (clone / ".env").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / home / "firewall.log").read_text().splitlines() == [
            f"firewall-cmd --quiet --permanent --zone=trusted --add-source={other['private_address']}",
            "firewall-cmd --quiet --reload"]
        assert f"{COMPOSE} up -d --wait" in calls(tmp_path, home)

    # remote_run: the worker first, with rank 1, then the pipeline on the first node as rank 0; both
    # rendezvous at the first node's private address.
    master = first["private_address"]
    ran = project.run("snakemake", "-c1", "remote_run")
    worker_line = ("snakemake --cores all prepare && python workflow/scripts/launch.py --node-rank 1 "
                   f"--master-addr {master}")
    run = f"{COMPOSE} --profile train run"
    worker_run = (f"{run} -e REPROSTACK_NODE_RANK=1 -e REPROSTACK_MASTER_ADDR={master} "
                  "--name reprostack-rank1 --rm train bash -c")
    first_run = f"{run} -e REPROSTACK_NODE_RANK=0 -e REPROSTACK_MASTER_ADDR={master} --rm train"
    check = f"{first_run} snakemake --cores all --dry-run --quiet rules"
    assert calls(tmp_path, "node-1")[-1] == f"{worker_run} {worker_line}"
    assert first_run in calls(tmp_path, "node")
    everything = (tmp_path / "docker-calls.log").read_text().splitlines()
    assert everything.index(f"node {check}") < everything.index(f"node-1 {worker_run} {worker_line}"), (
        "the first node is asked whether train runs before any worker starts")
    assert not any("launch.py" in line for line in calls(tmp_path, "node")), "rank 0 runs the pipeline"
    assert not any("REPROSTACK_NODE_RANK=0" in line for line in calls(tmp_path, "node-1"))
    record = state(project)["remote_run"]
    assert record["run_id"] == "run-on-rank-0" and not record["collected"]
    assert record["nodes"] == [
        {"name": names[0], "rank": 0, "command": first_run, "master_addr": master},
        {"name": names[1], "rank": 1, "command": f"{worker_run} '{worker_line}'", "master_addr": master},
    ]
    assert record["train_check"] == {"node": names[0], "command": check, "train_runs": True}
    assert "provisional" not in record and "warnings" not in record and "skipped_nodes" not in record
    said = ran.stdout + ran.stderr
    started = said.index(f"node {names[1]} (rank 1) started")
    assert started < said.index(f"node {names[0]} (rank 0, rendezvous at {master}) runs the pipeline")
    assert f"node {names[1]} (rank 1) finished" in said
    worker_log = project.path / "logs" / "nodes" / f"{names[1]}.log"
    assert worker_log.read_text() == f"worker ran: bash -c {worker_line}\n"

    # A worker that fails after the first node's pipeline succeeded (torchrun's exit barrier, say) is
    # a warning naming it and its log: the run is kept, exported and pushed, and teardown refuses.
    (tmp_path / "node-1" / "worker-exit").write_text("3\n")
    warned = project.run("snakemake", "-c1", "remote_run")
    warning = (f"node {names[1]} (rank 1, {second['private_address']}) ended with exit 3 after the first "
               f"node's run had succeeded; the run is kept; its log: logs/nodes/{names[1]}.log")
    said = warned.stdout + warned.stderr
    assert f"remote: warning: {warning}\n" in said and "remote: run finished on the node" in said
    assert "1 warning(s) about the other nodes" in said
    record = state(project)["remote_run"]
    assert record["warnings"] == [warning] and record["run_id"] == "run-on-rank-0"
    assert not record["collected"] and "provisional" not in record
    exports = [line for line in calls(tmp_path, "node") if line.endswith("run_copy.py export")]
    assert len(exports) == 2, "each run exported (the fake site has no object store: nothing to push)"
    refused = cham(project, "teardown")
    assert refused.returncode != 0 and "not tearing down" in refused.stderr
    assert not fake.requests_matching("DELETE", "/servers/")

    # teardown: both servers (each confirmed), the floating IP, then the lease.
    down = project.run("snakemake", "-c1", "teardown_force")
    deleted = [r["path"].rsplit("/", 1)[1] for r in fake.requests_matching("DELETE", "/servers/")]
    assert deleted == [first["id"], second["id"]]
    for node in (first, second):
        assert f"deleted server {node['id']}" in down.stdout
    assert fake.is_empty() and state(project) == {}
    assert set(homes) == {"node", "node-1"}


def test_count_and_nnodes_must_agree(tmp_path: Path, env: dict[str, str], fake: FakeChameleon) -> None:
    project = two_nodes(tmp_path, env, fake)
    project.set_config("chameleon.count", 3)
    refused = cham(project, "plan")
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert ("chameleon.count: 3 leases 3 node(s), but train.distributed.nnodes is 2: some would sit idle; "
            "accepted: chameleon.count: 2") in refused.stderr
    project.set_config("chameleon.count", 1)
    # The default count with nnodes 2 may be a cluster of another kind: the pipeline accepts it, and
    # only what would lease nodes refuses.
    assert project.run("snakemake", "-n").returncode == 0
    for action in ("plan", "provision", "check"):
        refused = cham(project, action)
        assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
        assert ("chameleon.count: 1 leases 1 node(s), but train.distributed.nnodes is 2: torchrun would "
                "wait for nodes that are not there; accepted: chameleon.count: 2") in refused.stderr
    project.set_config("chameleon.count", 2)
    project.set_config("train.distributed.nnodes", 1)
    refused = cham(project, "plan")
    assert ("chameleon.count: 2 leases 2 nodes, but train.distributed.nnodes is 1: only the first would "
            "train; accepted: chameleon.count: 1, or train.distributed.nnodes: 2 (pytorch)") in refused.stderr
    assert fake.requests == [], "refused before anything was asked of the site"


def test_a_one_server_state_file_still_reads(
    tmp_path: Path, env: dict[str, str], fake: FakeChameleon
) -> None:
    """A state file from before multi-node leases (`server_id`) is reused and torn down."""
    project = two_nodes(tmp_path, env, fake)
    project.set_config("chameleon.count", 1)
    project.set_config("train.distributed.nnodes", 1)
    assert cham(project, "provision").returncode == 0
    created = state(project)
    [node] = created["servers"]
    old = {k: v for k, v in created.items() if k != "servers"} | {"server_id": node["id"]}
    (project.path / ".chameleon" / "state.json").write_text(json.dumps(old))
    assert f"server {node['id']})" in cham(project, "plan").stdout
    again = cham(project, "provision")
    assert again.returncode == 0, again.stderr
    assert f"reusing server {node['id']}" in again.stdout
    assert state(project) == created, "read as a one-node list, its name and address looked up again"
    assert len(sent(fake, "POST", "/servers")) == 1
    (project.path / ".chameleon" / "state.json").write_text(json.dumps(old))
    down = cham(project, "teardown")
    assert down.returncode == 0, down.stderr
    assert f"deleted server {node['id']}" in down.stdout and fake.is_empty() and state(project) == {}


def test_kvm_nodes_share_the_flavor_reservation_and_a_group(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """KVM: both instances on the lease's reserved flavor, the security group on both, letting the
    members reach each other (KVM lets nothing in by default)."""
    with FakeChameleon(password="right-password", region="KVM@TACC") as kvm:
        env = {**env, "REPROSTACK_NODE_ROOT": str(tmp_path / "node")}
        project = two_nodes(tmp_path, env, kvm)
        project.set_config("chameleon.site", "KVM@TACC")
        project.set_config("chameleon.node_type", "m1.large")
        provisioned = cham(project, "provision")
        assert provisioned.returncode == 0, provisioned.stderr
        created = state(project)
        [lease] = kvm.leases()
        [reservation] = lease["reservations"]
        assert (reservation["resource_type"], reservation["amount"]) == ("flavor:instance", 2)
        servers = kvm.servers()
        assert sorted(s["id"] for s in servers) == sorted(n["id"] for n in created["servers"])
        assert {s["flavor"]["original_name"] for s in servers} == {f"reservation:{reservation['id']}"}
        [group] = kvm.security_groups()
        assert all({"name": group["name"]} in s["security_groups"] for s in servers)
        members = [r for r in group["security_group_rules"] if r.get("remote_group_id") == group["id"]]
        assert [(r["direction"], r.get("protocol")) for r in members] == [("ingress", None)]
        assert len(kvm.floating_ips()) == 1
        down = cham(project, "teardown")
        assert down.returncode == 0, down.stderr
        assert kvm.is_empty() and state(project) == {}


def test_a_finished_run_survives_a_failed_export_and_a_rerun_starts_no_worker(
    tmp_path: Path, env: dict[str, str], fake: FakeChameleon
) -> None:
    """The first node's pipeline succeeded, a worker then failed and the export failed: the run is
    recorded all the same (teardown refuses). The rerun finds train up to date on the first node:
    no worker is started (it would wait in torchrun's rendezvous for a rank 0 that never comes),
    and it exports."""
    project = two_nodes(tmp_path, env, fake)
    assert cham(project, "provision").returncode == 0
    project.run("snakemake", "-c1", "configure")
    first, second = state(project)["servers"]
    names, master = [first["name"], second["name"]], first["private_address"]
    (tmp_path / "node-1" / "worker-exit").write_text("3\n")
    (tmp_path / "node" / "export-exit").write_text("1\n")

    failed = project.run("snakemake", "-c1", "remote_run", check=False)
    said = failed.stdout + failed.stderr
    assert failed.returncode != 0
    assert (f"remote: warning: node {names[1]} (rank 1, {second['private_address']}) ended with exit 3 "
            f"after the first node's run had succeeded; the run is kept; its log: logs/nodes/{names[1]}.log"
            ) in said
    assert f"the run is kept on node {names[0]} (teardown refuses)" in said
    record = state(project)["remote_run"]
    assert record["provisional"] and not record["collected"] and record["run_id"] == "run-on-rank-0"
    assert record["unsaved"][:3] == ["MLflow run run-on-rank-0 (not exported)", "results/", "dvc.lock"]
    assert [node["name"] for node in record["nodes"]] == names and len(record["warnings"]) == 1
    refused = cham(project, "teardown")
    assert refused.returncode != 0
    assert "not tearing down" in refused.stderr and "`snakemake -c1 remote_run`" in refused.stderr
    assert not fake.requests_matching("DELETE", "/servers/") and len(fake.servers()) == 2
    not_yet = subprocess.run(["python", "workflow/scripts/remote.py", "collect"], cwd=project.path,
                             env=project.env, capture_output=True, text=True)
    assert not_yet.returncode != 0 and "run `snakemake -c1 remote_run` again" in not_yet.stderr

    # The rerun: train is up to date on the first node, so no worker is started.
    (tmp_path / "node" / "export-exit").unlink()
    (tmp_path / "node" / "train-up-to-date").touch()
    worker_calls = calls(tmp_path, "node-1")
    rerun = project.run("snakemake", "-c1", "remote_run")
    said = rerun.stdout + rerun.stderr
    assert calls(tmp_path, "node-1") == worker_calls, "nothing was run on the worker node"
    assert (f"remote: train is up to date on node {names[0]}: torchrun does not run, nothing to join; "
            f"not started: {names[1]} (rank 1)") in said
    run = (f"{COMPOSE} --profile train run -e REPROSTACK_NODE_RANK=0 -e REPROSTACK_MASTER_ADDR={master} "
           "--rm train")
    check = f"{run} snakemake --cores all --dry-run --quiet rules"
    assert calls(tmp_path, "node")[-3:-1] == [check, run]
    assert calls(tmp_path, "node")[-1].endswith("--rm train python workflow/scripts/run_copy.py export")
    record = state(project)["remote_run"]
    assert "provisional" not in record and "warnings" not in record and not record["collected"]
    assert record["unsaved"][0] == "MLflow run run-on-rank-0"
    assert record["train_check"] == {"node": names[0], "command": check, "train_runs": False}
    assert record["nodes"] == [{"name": names[0], "rank": 0, "command": run, "master_addr": master}]
    assert record["skipped_nodes"] == [{"name": names[1], "rank": 1, "why": (
        f"train is up to date on node {names[0]}: torchrun does not run, nothing to join")}]
    assert cham(project, "teardown").returncode != 0, "still not collected"
    down = project.run("snakemake", "-c1", "teardown_force")
    assert down.returncode == 0 and fake.is_empty() and state(project) == {}


DAG = "Building DAG of jobs...\n"
STATS = "Job stats:\njob         count\n--------  -------\n{rows}total           {total}\n\n"
PLANNED = STATS.format(rows="train           1\nevaluate        1\nall             1\n", total=3)
NOT_TRAIN = STATS.format(rows="evaluate        1\nall             1\n", total=2)


@pytest.mark.parametrize(("said", "runs"), [
    (DAG + PLANNED + "Reasons:\n    forced:\n        train\n", True),
    (DAG + NOT_TRAIN + "Reasons:\n    forced:\n        evaluate\n    input files updated by another job:\n"
     "        all, train\n", False),
    (DAG + "Nothing to be done (all requested files are present and up to date).\n", False),
])
def test_the_dry_run_says_whether_train_runs(said: str, runs: bool) -> None:
    """What Snakemake 9.27 prints for `--dry-run --quiet rules` (a `train <count>` row when train is
    planned; a mere mention of train elsewhere is not one)."""
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    import remote

    assert remote._train_pending(said) is runs
