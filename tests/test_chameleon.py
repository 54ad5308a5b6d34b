"""Provisioning against a fake Chameleon on loopback: the real python-chi talks HTTP to Keystone,
Blazar, Nova, Neutron and Glance fakes (tests/fake_chameleon.py); the rules run as Snakemake
processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, generate
from fake_chameleon import FakeChameleon

pytestmark = pytest.mark.slow
KEY = "paper-key"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(
        password="right-password", capacity={"gpu_rtx_6000": 1, "compute_skylake": 2}
    ) as server:
        yield server


def on_fake(tmp_path: Path, env: dict[str, str], fake: FakeChameleon, *answers: str) -> Project:
    """A fresh fake site with our key pair, and a project whose OS_* variables point at it."""
    fake.reset()
    fake.add_keypair(KEY)
    env = {k: v for k, v in env.items() if not k.startswith("OS_")}
    env.update(fake.os_env(), NO_PROXY="127.0.0.1,localhost", REPROSTACK_RUNNER="local")
    project = generate(tmp_path, "paper", env, "framework=sklearn", *answers)
    project.set_config("chameleon.key_name", KEY)
    project.set_config("chameleon.poll_seconds", 0.2)
    return project


@pytest.fixture
def project(tmp_path: Path, env: dict[str, str], fake: FakeChameleon) -> Project:
    return on_fake(tmp_path, env, fake, "chameleon_site=CHI@UC")


def state(project: Project) -> dict:
    path = project.path / ".chameleon" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_lifecycle_rerun_and_teardown(project: Project, fake: FakeChameleon) -> None:
    plan = project.snakemake("-c1", "plan").stdout
    assert "1 x gpu_rtx_6000 bare-metal node(s) + 1 floating IP" in plan and "CHI@UC" in plan
    dry = project.run("snakemake", "-c1", "provision", "-n")
    assert dry.returncode == 0 and fake.leases() == []

    first = project.run("snakemake", "-c1", "provision")
    assert "chameleon: ready: ssh cc@" in first.stdout
    created = state(project)
    assert set(created) >= {"lease_id", "server_id", "floating_ip", "site"}
    assert [lease["id"] for lease in fake.leases()] == [created["lease_id"]]
    assert [server["id"] for server in fake.servers()] == [created["server_id"]]
    assert [s["image_name"] if "image_name" in s else s.get("image", {}).get("id") for s in fake.servers()]
    assert project.run("git", "check-ignore", ".chameleon/state.json").returncode == 0

    again = project.run("snakemake", "-c1", "provision")
    assert "reusing lease" in again.stdout and "reusing server" in again.stdout
    assert state(project) == created
    assert len(fake.leases()) == 1 and len(fake.servers()) == 1

    down = project.run("snakemake", "-c1", "teardown")
    for what in (
        f"deleted server {created['server_id']}",
        f"released floating IP {created['floating_ip']}",
        f"deleted lease {created['lease_id']}",
    ):
        assert what in down.stdout
    assert fake.is_empty(), (fake.leases(), fake.servers(), fake.floating_ips())
    assert fake.security_groups() == [], "bare metal has no security groups; firewalld guards the node"
    assert state(project) == {}
    twice = project.run("snakemake", "-c1", "teardown")
    assert "nothing to tear down" in twice.stdout


def test_teardown_deletes_only_what_the_state_names(project: Project, fake: FakeChameleon) -> None:
    import os

    import chi.context
    import chi.lease

    saved = dict(os.environ)
    try:
        os.environ.update({k: v for k, v in project.env.items() if k.startswith("OS_")})
        chi.context.reset()
        other = chi.lease.Lease("someone-elses-lease", duration=__import__("datetime").timedelta(hours=1))
        other.add_node_reservation(amount=1, node_type="compute_skylake")
        other.submit(wait_for_active=False, show=None, idempotent=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        chi.context.reset()
    project.run("snakemake", "-c1", "provision")
    project.run("snakemake", "-c1", "teardown")
    assert [lease["name"] for lease in fake.leases()] == ["someone-elses-lease"]


def test_no_capacity_is_named(project: Project, fake: FakeChameleon) -> None:
    project.set_config("chameleon.count", 2)
    failed = project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    assert "no capacity" in failed.stderr and "gpu_rtx_6000" in failed.stderr and "CHI@UC" in failed.stderr
    assert fake.leases() == []


def test_missing_and_wrong_credentials(project: Project, fake: FakeChameleon) -> None:
    missing = Project(project.path, {k: v for k, v in project.env.items() if k != "OS_PASSWORD"})
    failed = missing.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0 and "credentials missing: OS_PASSWORD" in failed.stderr
    wrong = Project(project.path, {**project.env, "OS_PASSWORD": "wrong-password"})
    failed = wrong.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0 and "rejected the credentials" in failed.stderr
    assert "wrong-password" not in failed.stderr + failed.stdout
    assert fake.leases() == [] and not (project.path / ".chameleon" / "state.json").exists()


def test_timeout_says_how_long_and_error_is_not_reused(project: Project, fake: FakeChameleon) -> None:
    fake.lease_final_status = None  # never becomes ACTIVE
    project.set_config("chameleon.lease_timeout_minutes", 0.02)
    failed = project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    assert "after waiting 1 s" in failed.stderr and "run teardown" in failed.stderr
    assert state(project)["lease_id"] == fake.leases()[0]["id"], "recorded, so teardown can delete it"
    project.run("snakemake", "-c1", "teardown")
    assert fake.is_empty()

    fake.lease_final_status = "ERROR"
    failed = project.run("snakemake", "-c1", "provision", check=False)
    assert "is in ERROR; it will not be reused" in failed.stderr
    again = project.run("snakemake", "-c1", "provision", check=False)
    assert "is in ERROR; it will not be reused" in again.stderr
    assert len(fake.leases()) == 1, "a lease in ERROR is reported, and no second one is made"
    fake.lease_final_status = "ACTIVE"
    project.run("snakemake", "-c1", "teardown")


def test_unknown_node_type_lists_the_known_ones(project: Project) -> None:
    project.set_config("chameleon.node_type", "gpu_v100_imaginary")
    failed = project.run("snakemake", "-c1", "plan", check=False)
    assert failed.returncode != 0
    assert "chameleon.node_type: 'gpu_v100_imaginary' is not a known node type at CHI@UC" in failed.stderr
    assert "gpu_rtx_6000" in failed.stderr


def test_trovi_json(project: Project) -> None:
    trovi = json.loads((project.path / "trovi.json").read_text())
    assert trovi["name"] == "digits-repro" and trovi["actionApplication"]["trovi_type"] == "jupyterhub"
    assert trovi["author"][0]["name"] and "reproducibility" in trovi["keywords"]


def test_configure_run_and_collect_through_the_command_runner(
    project: Project, fake: FakeChameleon, tmp_path: Path
) -> None:
    """The SSH steps against a local shell standing in for the node; `docker` there is a stub
    that runs the compose commands' effect (the training container runs the pipeline)."""
    node = tmp_path / "node"
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "docker").write_text(
        "#!/usr/bin/env bash\n"
        'echo "docker $*" >> "$HOME/../docker-calls.log"\n'
        'case "$*" in *"--profile train run"*) exec snakemake --cores all ;; *) exit 0 ;; esac\n'
    )
    (stub / "firewall-cmd").write_text(
        '#!/usr/bin/env bash\necho "firewall-cmd $*" >> "$HOME/../firewall.log"\n'
    )
    (stub / "sudo").write_text('#!/usr/bin/env bash\nexec "$@"\n')
    for tool in stub.iterdir():
        tool.chmod(0o755)
    project.set_config("chameleon.node_type", "compute_skylake")
    project.set_config("chameleon.open_ports", [8888])
    project.run("git", "commit", "-qam", "CPU node")
    env = {**project.env, "REPROSTACK_NODE_ROOT": str(node), "HOME": str(node),
           "PATH": f"{stub}:{project.env['PATH']}"}
    remote = Project(project.path, env)
    remote.run("snakemake", "-c1", "provision")

    configured = remote.run("snakemake", "-c1", "configure")
    head = remote.run("git", "rev-parse", "HEAD").stdout.strip()
    assert remote.run("git", "-C", str(node / "project"), "rev-parse", "HEAD").stdout.strip() == head
    env_file = node / "project" / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert env_file.read_text() == (project.path / ".env").read_text()
    secrets = [line.split("=", 1)[1] for line in env_file.read_text().splitlines() if "=" in line]
    for secret in secrets:
        assert secret not in configured.stdout + configured.stderr
    firewall = (tmp_path / "firewall.log").read_text().splitlines()
    assert firewall == [
        "firewall-cmd --quiet --permanent --add-port=8888/tcp",
        "firewall-cmd --quiet --reload",
    ]
    calls = (tmp_path / "docker-calls.log").read_text()
    assert "compose -f docker/compose.yaml --env-file .env up -d --wait" in calls

    ran = remote.run("snakemake", "-c1", "remote_run")
    assert "steps (100%) done" in ran.stdout + ran.stderr  # the node's pipeline output streamed here
    assert "--profile train run --rm train" in (tmp_path / "docker-calls.log").read_text()

    collected = remote.run("snakemake", "-c1", "collect")
    node_run = json.loads((node / "project" / "results" / "run.json").read_text())
    assert f"MLflow run {node_run['run_id']}" in collected.stdout
    assert json.loads((project.path / "results" / "metrics.json").read_text()) == json.loads(
        (node / "project" / "results" / "metrics.json").read_text()
    )
    assert (project.path / "models" / "model.joblib").exists()
    status = remote.run("dvc", "status").stdout
    assert "train" not in status and "evaluate" not in status
    remote.run("snakemake", "-c1", "teardown")
    assert fake.is_empty()


@pytest.fixture(scope="module")
def kvm_fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(password="right-password", region="KVM@TACC") as server:
        yield server


@pytest.fixture
def kvm_project(tmp_path: Path, env: dict[str, str], kvm_fake: FakeChameleon) -> Project:
    project = on_fake(tmp_path, env, kvm_fake, "chameleon_site=KVM@TACC", "node_type=m1.large")
    project.set_config("chameleon.open_ports", [8888])
    return project


def test_kvm_flavor_lease_security_group_and_teardown(kvm_project: Project, kvm_fake: FakeChameleon) -> None:
    plan = kvm_project.snakemake("-c1", "plan").stdout
    assert "1 x flavor m1.large (virtual machine) + 1 floating IP" in plan
    assert "security group letting in tcp 22, 8888" in plan and "KVM@TACC (kvm)" in plan

    kvm_project.run("snakemake", "-c1", "provision")
    created = state(kvm_project)
    assert set(created) >= {"lease_id", "server_id", "security_group_id", "floating_ip"}
    [lease] = kvm_fake.leases()
    [reservation] = lease["reservations"]
    [public] = [f for f in kvm_fake.flavors_named("m1.large") if f["name"] == "m1.large"]
    assert (reservation["resource_type"], reservation["amount"]) == ("flavor:instance", 1)
    assert json.loads(reservation["resource_properties"])["id"] == public["id"], "reserves m1.large"
    [server] = kvm_fake.servers()
    assert server["flavor"]["original_name"] == f"reservation:{reservation['id']}", "on the reserved flavor"
    assert server["key_name"] == KEY
    [group] = kvm_fake.security_groups()
    assert group["id"] == created["security_group_id"]
    assert {"name": group["name"]} in server["security_groups"]
    rules = sorted((r["direction"], r["protocol"], r["port_range_min"], r["port_range_max"])
                   for r in group["security_group_rules"])
    assert rules == [("ingress", "tcp", 22, 22), ("ingress", "tcp", 8888, 8888)]
    [fip] = kvm_fake.floating_ips()
    assert fip["floating_ip_address"] == created["floating_ip"] and fip["port_id"], "allocated and attached"

    again = kvm_project.run("snakemake", "-c1", "provision")
    assert "reusing lease" in again.stdout and "reusing server" in again.stdout
    assert "reusing floating IP" in again.stdout and state(kvm_project) == created
    counts = (len(kvm_fake.leases()), len(kvm_fake.servers()), len(kvm_fake.security_groups()),
              len(kvm_fake.floating_ips()))
    assert counts == (1, 1, 1, 1)

    kvm_project.set_config("chameleon.open_ports", [6006])  # the rules follow the config on a rerun
    changed = kvm_project.run("snakemake", "-c1", "provision")
    assert "lets in tcp 6006" in changed.stdout and "no longer lets in tcp 8888" in changed.stdout
    [group] = kvm_fake.security_groups()
    assert sorted(r["port_range_min"] for r in group["security_group_rules"]) == [22, 6006]
    assert len(kvm_fake.servers()) == 1 and state(kvm_project) == created

    down = kvm_project.run("snakemake", "-c1", "teardown")
    for what in (f"deleted server {created['server_id']}", f"released floating IP {created['floating_ip']}",
                 f"deleted security group {created['security_group_id']}",
                 f"deleted lease {created['lease_id']}"):
        assert what in down.stdout
    assert kvm_fake.is_empty(), (kvm_fake.leases(), kvm_fake.security_groups(), kvm_fake.floating_ips())
    assert "nothing to tear down" in kvm_project.run("snakemake", "-c1", "teardown").stdout


def test_kvm_capacity_and_missing_flavor_are_named(kvm_project: Project, kvm_fake: FakeChameleon) -> None:
    kvm_project.set_config("chameleon.count", 5)
    failed = kvm_project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    expected = "no capacity: Chameleon has not enough free instances of flavor m1.large at KVM@TACC"
    assert expected in failed.stderr
    assert kvm_fake.leases() == [] and kvm_fake.security_groups() == []

    kvm_project.set_config("chameleon.count", 1)
    kvm_project.set_config("chameleon.node_type", "g1.h100.pci.1")
    with kvm_fake.lock:  # this site no longer offers the GPU flavor
        for fid in [f["id"] for f in kvm_fake.flavors_named("g1.")]:
            del kvm_fake.flavors[fid]
    failed = kvm_project.run("snakemake", "-c1", "provision", check=False)
    assert "flavor 'g1.h100.pci.1' is not offered at KVM@TACC; it offers:" in failed.stderr
    assert "m1.large" in failed.stderr and kvm_fake.leases() == []


def test_kvm_default_flavor_and_site_checks(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "kvm", env, "chameleon_site=KVM@TACC")
    cham = project.config["chameleon"]
    assert (cham["site"], cham["node_type"], cham["open_ports"]) == ("KVM@TACC", "g1.h100.pci.1", [])
    assert "CC-Ubuntu24.04-CUDA (nvidia)" in project.snakemake("-c1", "plan").stdout
    project.set_config("chameleon.open_ports", [70000])
    failed = project.run("snakemake", "-c1", "plan", check=False)
    assert failed.returncode != 0 and "open_ports" in failed.stderr and "70000" in failed.stderr
