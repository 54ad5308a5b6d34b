"""Provisioning against a fake Chameleon on loopback: the real python-chi talks HTTP to Keystone,
Blazar, Nova, Neutron and Glance fakes (tests/fake_chameleon.py); the rules run as Snakemake
processes."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import pty
import re
import subprocess
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


def no_tty(project: Project, *cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A command with no terminal on stdin (so nothing can be asked), whatever runs pytest."""
    return subprocess.run(cmd, cwd=project.path, env=env or project.env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)


def without_os(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("OS_")}


# Chameleon's openrc files, as its sites hand them out (values point at the fake). The password one
# as published copies show it (e.g. github.com/inference-serving/LLM-serving-with-proxy-models,
# CHI-241297-openrc.sh); the application-credential one as Horizon writes it for a credential.
PASSWORD_OPENRC = """#!/usr/bin/env bash
export OS_AUTH_URL={auth_url}
export OS_IDENTITY_API_VERSION=3
export OS_INTERFACE=public
export OS_PROJECT_ID="{project_id}"
export OS_USERNAME="{username}"
export OS_PROTOCOL="openid"
export OS_AUTH_TYPE="v3oidcpassword"
echo "($OS_USERNAME) Please enter your Chameleon CLI password: "
read -sr OS_PASSWORD_INPUT
export OS_PASSWORD=$OS_PASSWORD_INPUT
export OS_IDENTITY_PROVIDER="chameleon"
export OS_DISCOVERY_ENDPOINT="{url}/oidc/.well-known/openid-configuration"
export OS_CLIENT_ID="{client_id}"
export OS_ACCESS_TOKEN_TYPE="access_token"
export OS_CLIENT_SECRET="none"
export OS_REGION_NAME="{region}"
if [ -z "$OS_REGION_NAME" ]; then unset OS_REGION_NAME; fi
"""
APP_CRED_OPENRC = """#!/usr/bin/env bash
export OS_AUTH_TYPE=v3applicationcredential
export OS_AUTH_URL={auth_url}
export OS_IDENTITY_API_VERSION=3
export OS_REGION_NAME="{region}"
export OS_INTERFACE=public
export OS_APPLICATION_CREDENTIAL_ID={app_cred_id}
export OS_APPLICATION_CREDENTIAL_SECRET={app_cred_secret}
"""


def write_openrc(project: Project, fake: FakeChameleon, template: str) -> None:
    names = ("auth_url", "project_id", "username", "url", "client_id", "region",
             "app_cred_id", "app_cred_secret")
    values = {name: getattr(fake, name) for name in names}
    (project.path / "site-openrc.sh").write_text(template.format(**values))
    project.set_config("chameleon.openrc", "site-openrc.sh")


def token_requests(fake: FakeChameleon) -> list[dict]:
    return [r for r in fake.requests_matching("POST", "/v3/auth/tokens") if r["body"]]


def sent(fake: FakeChameleon, method: str, path_end: str) -> list[dict]:
    """The bodies python-chi sent to paths ending in path_end."""
    return [r["body"] for r in fake.requests_matching(method) if r["path"].rstrip("/").endswith(path_end)]


def assert_lease_sent(fake: FakeChameleon, cham: dict, lease_name: str) -> dict:
    """The one lease request: its name, and an end duration_hours after its start. Returns it."""
    [body] = sent(fake, "POST", "/leases")
    [lease] = fake.leases()
    assert body["name"] == lease["name"] == lease_name
    assert body["start_date"] == "now"
    sent_end = dt.datetime.strptime(body["end_date"], "%Y-%m-%d %H:%M")
    start, end = (dt.datetime.strptime(lease[k], "%Y-%m-%dT%H:%M:%S.%f") for k in ("start_date", "end_date"))
    assert end == sent_end
    # python-chi sends the end to the minute: within a minute of start + duration_hours
    wanted = dt.timedelta(hours=cham["duration_hours"])
    assert abs(end - start - wanted) <= dt.timedelta(minutes=1), (start, end)
    return body


def assert_server_sent(fake: FakeChameleon, image: str) -> dict:
    """The one server request: image, key, network (sharednet1). Returns the whole body."""
    [body] = sent(fake, "POST", "/servers")
    server = body["server"]
    assert fake.images[server["imageRef"]]["name"] == image
    assert server["key_name"] == KEY
    assert fake.sharednet["name"] == "sharednet1"
    assert server["networks"] == [{"uuid": fake.sharednet["id"]}]
    return body


def test_lifecycle_rerun_and_teardown(project: Project, fake: FakeChameleon) -> None:
    plan = project.snakemake("-c1", "plan").stdout
    assert "1 x gpu_rtx_6000 bare-metal node(s) + 1 floating IP" in plan and "CHI@UC" in plan
    dry = project.run("snakemake", "-c1", "provision", "-n")
    assert dry.returncode == 0 and fake.leases() == []

    project.set_config("chameleon.duration_hours", 3)  # not the default, so a fixed duration is caught
    fake.gets_to_transition = 2  # each status is seen by a poll: PENDING, STARTING, ACTIVE
    first = project.run("snakemake", "-c1", "provision")
    assert "chameleon: ready: ssh cc@" in first.stdout
    created = state(project)
    assert set(created) >= {"lease_id", "servers", "floating_ip", "site"}
    name = created["lease_name"]
    for change in ("PENDING", "PENDING -> STARTING", "STARTING -> ACTIVE"):  # each with its elapsed time
        assert re.search(rf"^chameleon: lease {name}: {change} \(\d+ s\)$", first.stdout, re.M), first.stdout
    server_line = rf"^chameleon: server {created['servers'][0]['id']}: (BUILD -> )?ACTIVE \(\d+ s\)$"
    assert re.search(server_line, first.stdout, re.M)

    cham = project.config["chameleon"]
    lease_body = assert_lease_sent(fake, cham, name)
    reservations = {r["resource_type"]: r for r in lease_body["reservations"]}
    assert sorted(reservations) == ["physical:host", "virtual:floatingip"]
    host, fip = reservations["physical:host"], reservations["virtual:floatingip"]
    assert (int(host["min"]), int(host["max"])) == (1, 1)
    assert json.loads(host["resource_properties"]) == ["==", "$node_type", cham["node_type"]] == [
        "==", "$node_type", "gpu_rtx_6000"]
    assert (int(fip["amount"]), fip["network_id"]) == (1, fake.public_net["id"])
    server_body = assert_server_sent(fake, "CC-Ubuntu24.04-CUDA")  # the NVIDIA node's default
    [lease] = fake.leases()
    [host_reservation] = [r for r in lease["reservations"] if r["resource_type"] == "physical:host"]
    hints = server_body.get("os:scheduler_hints") or server_body.get("OS-SCH-HNT:scheduler_hints")
    assert hints == {"reservation": host_reservation["id"]}
    flavor = server_body["server"]["flavorRef"]
    assert fake.flavors.get(flavor, {}).get("name", flavor) == "baremetal"
    assert [lease["id"] for lease in fake.leases()] == [created["lease_id"]]
    assert [server["id"] for server in fake.servers()] == [created["servers"][0]["id"]]
    assert [s["image_name"] if "image_name" in s else s.get("image", {}).get("id") for s in fake.servers()]
    assert project.run("git", "check-ignore", ".chameleon/state.json").returncode == 0

    again = project.run("snakemake", "-c1", "provision")
    assert "reusing lease" in again.stdout and "reusing server" in again.stdout
    assert state(project) == created
    assert len(fake.leases()) == 1 and len(fake.servers()) == 1

    down = project.run("snakemake", "-c1", "teardown")
    for what in (
        f"deleted server {created['servers'][0]['id']}",
        f"released floating IP {created['floating_ip']}",
        f"deleted lease {created['lease_name']} ({created['lease_id']})",
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
    fake.busy = {"gpu_rtx_6000": 1}  # the site's one such node is another project's
    failed = project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    assert "no capacity" in failed.stderr and "gpu_rtx_6000" in failed.stderr and "CHI@UC" in failed.stderr
    assert fake.leases() == []


def test_missing_and_wrong_credentials(project: Project, fake: FakeChameleon) -> None:
    missing = {k: v for k, v in project.env.items() if k != "OS_PASSWORD"}
    failed = no_tty(project, "snakemake", "-c1", "provision", env=missing)
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
    held = f"still held at CHI@UC: lease {state(project)['lease_name']} ({state(project)['lease_id']}); "
    assert held + "release them with `snakemake -c1 teardown`" in failed.stderr
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
    assert set(created) >= {"lease_id", "servers", "security_group_id", "floating_ip"}
    [lease] = kvm_fake.leases()
    [reservation] = lease["reservations"]
    [public] = [f for f in kvm_fake.flavors_named("m1.large") if f["name"] == "m1.large"]
    assert (reservation["resource_type"], reservation["amount"]) == ("flavor:instance", 1)
    assert json.loads(reservation["resource_properties"])["id"] == public["id"], "reserves m1.large"
    [server] = kvm_fake.servers()
    assert server["flavor"]["original_name"] == f"reservation:{reservation['id']}", "on the reserved flavor"
    assert server["key_name"] == KEY
    cham = kvm_project.config["chameleon"]
    [sent_reservation] = assert_lease_sent(kvm_fake, cham, created["lease_name"])["reservations"]
    assert (sent_reservation["resource_type"], int(sent_reservation["amount"])) == ("flavor:instance", 1)
    assert sent_reservation["flavor_id"] == public["id"], "the public m1.large, not the reserved copy"
    server_body = assert_server_sent(kvm_fake, "CC-Ubuntu24.04")  # m1.large has no GPU
    assert server_body["server"]["flavorRef"] in (reservation["id"], f"reservation:{reservation['id']}")
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
    server_id = created["servers"][0]["id"]
    for what in (f"deleted server {server_id}", f"released floating IP {created['floating_ip']}",
                 f"deleted security group {created['security_group_id']}",
                 f"deleted lease {created['lease_name']} ({created['lease_id']})"):
        assert what in down.stdout
    assert kvm_fake.is_empty(), (kvm_fake.leases(), kvm_fake.security_groups(), kvm_fake.floating_ips())
    assert "nothing to tear down" in kvm_project.run("snakemake", "-c1", "teardown").stdout


def test_kvm_capacity_and_missing_flavor_are_named(kvm_project: Project, kvm_fake: FakeChameleon) -> None:
    kvm_fake.flavor_capacity["m1.large"] = 0  # every such instance is reserved
    failed = kvm_project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    expected = "no capacity: Chameleon has not enough free instances of flavor m1.large at KVM@TACC"
    assert expected in failed.stderr
    assert kvm_fake.leases() == [] and kvm_fake.security_groups() == []

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


def test_application_credential_openrc_is_unscoped(project: Project, fake: FakeChameleon) -> None:
    """Chameleon's application-credential openrc has no project; a leftover OS_PROJECT_ID is not
    sent, since Keystone refuses a scope with an application credential (the fake does too)."""
    import requests

    write_openrc(project, fake, APP_CRED_OPENRC)
    env = {**without_os(project.env), "OS_PROJECT_ID": fake.project_id, "OS_PROJECT_NAME": fake.project_name}
    checked = no_tty(project, "python", "workflow/scripts/chameleon.py", "check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "checks passed at CHI@UC (v3applicationcredential)" in checked.stdout
    [auth] = [r["body"]["auth"] for r in token_requests(fake)]
    assert auth["identity"]["methods"] == ["application_credential"] and "scope" not in auth
    assert fake.app_cred_secret not in checked.stdout + checked.stderr
    scoped = requests.post(fake.auth_url + "/auth/tokens", json={"auth": {
        "identity": {"methods": ["application_credential"], "application_credential": {
            "id": fake.app_cred_id, "secret": fake.app_cred_secret}},
        "scope": {"project": {"id": fake.project_id}}}}, timeout=10)
    assert scoped.status_code == 401 and "cannot request a scope" in scoped.text

    wrong = {**env, "OS_APPLICATION_CREDENTIAL_SECRET": "revoked"}
    failed = no_tty(project, "python", "workflow/scripts/chameleon.py", "check", env=wrong)
    assert failed.returncode != 0 and "application credential: wrong, expired or revoked" in failed.stderr


def test_password_openrc_takes_the_environment_or_asks(project: Project, fake: FakeChameleon) -> None:
    """Chameleon's password openrc (v3oidcpassword): its `export OS_PASSWORD=$OS_PASSWORD_INPUT` is
    never taken literally; the password comes from OS_PASSWORD, else from the terminal, else the
    command stops naming OS_PASSWORD. The OIDC exchange runs against the fake identity provider."""
    write_openrc(project, fake, PASSWORD_OPENRC)
    env = without_os(project.env)
    check = ("python", "workflow/scripts/chameleon.py", "check")
    failed = no_tty(project, *check, env=env)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines()[-1].startswith("chameleon: credentials missing: OS_PASSWORD ")
    assert fake.requests == [], "nothing sent, least of all the password '$OS_PASSWORD_INPUT'"

    passed = no_tty(project, *check, env={**env, "OS_PASSWORD": "right-password"})
    assert passed.returncode == 0, passed.stderr
    assert "checks passed at CHI@UC (v3oidcpassword)" in passed.stdout
    [grant] = [r["body"] for r in fake.requests_matching("POST", "/oidc/token")]
    assert (grant["grant_type"], grant["username"], grant["password"]) == ("password", fake.username,
                                                                           "right-password")
    assert fake.requests_matching("POST", "/OS-FEDERATION/identity_providers/chameleon/protocols/openid/auth")
    [rescope] = [r["body"]["auth"] for r in token_requests(fake)]
    assert rescope["scope"]["project"]["id"] == fake.project_id, "the federated token, scoped to the project"

    fake.reset()
    fake.add_keypair(KEY)
    main, child = pty.openpty()  # a terminal, in a session of its own: getpass reads it as stdin
    proc = subprocess.Popen(check, cwd=project.path, env=env, stdin=child, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.close(child)
    out = err = ""
    try:  # getpass flushes what was typed before its prompt: type until the command is done
        for _ in range(120):
            os.write(main, b"right-password\n")
            try:
                out, err = proc.communicate(timeout=1)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        proc.kill()
        os.close(main)
    assert proc.returncode == 0, err
    assert "Chameleon password for testuser" in out + err and "checks passed at CHI@UC" in out
    assert not (project.path / ".chameleon").exists(), "the password is kept nowhere"


def test_checks_before_reserving_name_the_field(project: Project, fake: FakeChameleon) -> None:
    """Key pair, image, node type: each failure one line naming its field, all of them at once; the
    duration and the credentials' region likewise. No lease is asked for."""
    project.set_config("chameleon.key_name", "someone-elses-key")
    with fake.lock:
        del fake.capacity["gpu_rtx_6000"]  # the site no longer offers the node type
        [cuda] = [i for i, image in fake.images.items() if image["name"] == "CC-Ubuntu24.04-CUDA"]
        del fake.images[cuda]
    failed = project.run("snakemake", "-c1", "provision", check=False)
    assert failed.returncode != 0
    lines = failed.stderr.splitlines()
    for expected in (
        f"chameleon.key_name: key pair 'someone-elses-key' does not exist at CHI@UC; yours there: {KEY}",
        "chameleon.image: image 'CC-Ubuntu24.04-CUDA' does not exist at CHI@UC",
        "chameleon.node_type: node type 'gpu_rtx_6000' is not offered at CHI@UC; it offers: compute_skylake",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, failed.stderr)
    assert "3 check(s) failed; nothing was reserved" in failed.stderr

    project.set_config("chameleon.key_name", KEY)
    project.set_config("chameleon.duration_hours", 200)  # the config schema's bound and the site's
    failed = project.run("python", "workflow/scripts/chameleon.py", "provision", check=False)
    assert failed.returncode != 0 and "chameleon.duration_hours: 200 " in failed.stderr.splitlines()[-1]
    assert "168" in failed.stderr.splitlines()[-1]
    spec = importlib.util.spec_from_file_location("chameleon", project.path / "workflow/scripts/chameleon.py")
    chameleon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chameleon)  # the site's own limit, whatever the schema allows
    with pytest.raises(SystemExit, match=r"chameleon\.duration_hours: 200 is outside CHI@UC's lease limit"):
        chameleon.settings({"chameleon": {"site": "CHI@UC", "node_type": "gpu_p100", "duration_hours": 200}})

    project.set_config("chameleon.duration_hours", 4)
    other = {**project.env, "OS_REGION_NAME": "KVM@TACC"}
    failed = no_tty(project, "snakemake", "-c1", "provision", env=other)
    assert "chameleon.site: 'CHI@UC', but the credentials say OS_REGION_NAME=KVM@TACC" in failed.stderr
    unnamed = {k: v for k, v in project.env.items() if k != "OS_REGION_NAME"}
    fake.region = "KVM@TACC"  # the token's catalog is another site's
    try:
        failed = no_tty(project, "snakemake", "-c1", "provision", env=unnamed)
    finally:
        fake.region = "CHI@UC"
    assert "chameleon.site: 'CHI@UC', but the credentials' service catalog is for KVM@TACC" in failed.stderr
    assert fake.requests_matching("POST", "/leases") == [] and fake.leases() == []
    assert not (project.path / ".chameleon" / "state.json").exists()


def test_kvm_open_ports_never_touch_firewalld(kvm_project: Project, tmp_path: Path) -> None:
    """On KVM the security group is the firewall: configure opens nothing in firewalld, so a node
    where firewalld is stopped (firewall-cmd fails) configures all the same."""
    stub = tmp_path / "stub-bin"
    stub.mkdir()
    (stub / "firewall-cmd").write_text(
        '#!/usr/bin/env bash\necho "firewall-cmd $*" >> "$HOME/../firewall.log"\n'
        'echo "FirewallD is not running" >&2\nexit 252\n'
    )
    (stub / "docker").write_text("#!/usr/bin/env bash\nexit 0\n")
    (stub / "sudo").write_text('#!/usr/bin/env bash\nexec "$@"\n')
    for tool in stub.iterdir():
        tool.chmod(0o755)
    node = tmp_path / "node"
    env = {**kvm_project.env, "REPROSTACK_NODE_ROOT": str(node), "HOME": str(node),
           "PATH": f"{stub}:{kvm_project.env['PATH']}"}
    configured = Project(kvm_project.path, env).run("snakemake", "-c1", "configure")
    said = "remote: KVM: the security group lets in tcp 22, 8888; firewalld is left alone"
    assert said in configured.stdout
    assert not (tmp_path / "firewall.log").exists()


def test_waits_say_each_change_and_keep_saying_they_wait(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "chameleon_poll", Path(__file__).resolve().parents[1] / "workflow/scripts/chameleon.py")
    chameleon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chameleon)
    chameleon.HEARTBEAT_S = 0.05  # 60 s in use
    statuses = iter(["PENDING"] * 12 + ["STARTING", "ACTIVE"])
    assert chameleon._poll("lease paper-1", lambda: next(statuses), 30, 0.01, "ACTIVE") == "ACTIVE"
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "chameleon: lease paper-1: PENDING (0 s)"
    heartbeat = r"chameleon: lease paper-1: still PENDING \(\d+ s, want ACTIVE\)"
    assert any(re.fullmatch(heartbeat, line) for line in lines)
    assert re.fullmatch(r"chameleon: lease paper-1: PENDING -> STARTING \(\d+ s\)", lines[-2])
    assert re.fullmatch(r"chameleon: lease paper-1: STARTING -> ACTIVE \(\d+ s\)", lines[-1])
