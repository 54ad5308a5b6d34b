"""Leases as they live: ended, deleted or pending leases and servers deleted outside the tool, each
said at once in one line; teardown that asks only the site the state names and keeps the state file
while anything it names may be alive; `extend` within Chameleon's policy. Against the fake site
(tests/fake_chameleon.py), one generated project per module: the steps run as the scripts
themselves (the rules are thin shells around them), the new rules once each through Snakemake."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Project, generate, make_env
from fake_chameleon import FakeChameleon

KEY = "paper-key"
SCRIPT = Path(__file__).resolve().parents[1] / "workflow/scripts/chameleon.py"
FMT = "%Y-%m-%dT%H:%M:%S.%f"


def load_module():
    spec = importlib.util.spec_from_file_location("chameleon_lifecycle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def made(tmp: Path, fake: FakeChameleon, *answers: str) -> Project:
    env = {k: v for k, v in make_env(tmp).items() if not k.startswith("OS_")}
    env.update(fake.os_env(), NO_PROXY="127.0.0.1,localhost", REPROSTACK_RUNNER="local")
    project = generate(tmp, "paper", env, "framework=sklearn", *answers)
    project.set_config("chameleon.key_name", KEY)
    project.set_config("chameleon.poll_seconds", 0.1)
    return project


def fresh(project: Project, fake: FakeChameleon, config: str) -> Project:
    """The module's project with its first config and no state, on an empty fake site."""
    fake.reset()
    fake.add_keypair(KEY)
    shutil.rmtree(project.path / ".chameleon", ignore_errors=True)
    (project.path / "config" / "config.yaml").write_text(config)
    return project


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(password="right-password", capacity={"gpu_rtx_6000": 1}) as server:
        yield server


@pytest.fixture(scope="module")
def made_project(tmp_path_factory: pytest.TempPathFactory, fake: FakeChameleon) -> tuple[Project, str]:
    project = made(tmp_path_factory.mktemp("life"), fake, "chameleon_site=CHI@UC")
    return project, (project.path / "config" / "config.yaml").read_text()


@pytest.fixture
def project(made_project: tuple[Project, str], fake: FakeChameleon) -> Project:
    return fresh(made_project[0], fake, made_project[1])


def state(project: Project) -> dict:
    path = project.path / ".chameleon" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def cham(project: Project, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The script itself, with no terminal to ask on."""
    return subprocess.run(["python", "workflow/scripts/chameleon.py", *args], cwd=project.path,
                          env=env or project.env, stdin=subprocess.DEVNULL, capture_output=True, text=True)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """A failure is one line on stderr, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def provisioned(project: Project) -> dict:
    done = cham(project, "provision")
    assert done.returncode == 0, done.stderr
    return state(project)


def replaced(created: dict, server: dict, fake: FakeChameleon) -> dict:
    """The state's entry for a server launched in place of the first: its name, its own address."""
    [port] = [p for p in fake.ports() if p["device_id"] == server["id"]]
    return {"id": server["id"], "name": created["servers"][0]["name"],
            "private_address": port["fixed_ips"][0]["ip_address"]}


def ref(created: dict) -> str:
    return f"lease {created['lease_name']} ({created['lease_id']})"


def utc(text: str) -> str:
    return f"{dt.datetime.strptime(text, FMT):%Y-%m-%d %H:%M} UTC"


def deletes(fake: FakeChameleon) -> list[dict]:
    return fake.requests_matching("DELETE")


# ---------------------------------------------------------------------------------------- waiting
@pytest.mark.parametrize("end", ["TERMINATED", "TERMINATING", "DELETING", "GONE", "ERROR"])
def test_poll_stops_at_once_on_any_end(end: str) -> None:
    chameleon = load_module()
    stops = chameleon.LEASE_STOPS
    seen = iter(["PENDING", "PENDING", end])
    start = time.monotonic()
    assert chameleon._poll("lease x", lambda: next(seen), 600, 0.01, "ACTIVE", stops=stops) == end
    assert time.monotonic() - start < 1, "returned at once, not after the timeout"


@pytest.mark.slow
def test_ended_or_broken_lease_stops_provision_at_once(project: Project, fake: FakeChameleon) -> None:
    project.set_config("chameleon.lease_timeout_minutes", 10)  # waiting it out would show
    created = provisioned(project)
    servers = len(fake.requests_matching("POST", "/servers"))

    fake.set_lease(created["lease_id"], status="TERMINATING")
    start = time.monotonic()
    line = one_line(cham(project, "provision"))
    [lease] = fake.leases()
    assert line == (
        f"chameleon: {ref(created)} ended at {utc(lease['end_date'])} (TERMINATING); "
        f"`snakemake -c1 teardown` releases what is left (floating IP {created['floating_ip']}) and "
        "clears the state file, then `snakemake -c1 provision` makes a new lease"
    )
    fake.set_lease(created["lease_id"], status="ERROR")
    failed = cham(project, "provision")
    assert failed.stderr.startswith(f"chameleon: {ref(created)} is in ERROR; it will not be reused")

    fake.end_lease(created["lease_id"])  # its end date passes: Blazar takes the node back
    line = one_line(cham(project, "provision"))
    [lease] = fake.leases()
    assert line.startswith(f"chameleon: {ref(created)} ended at {utc(lease['end_date'])} (TERMINATED); ")
    assert time.monotonic() - start < 20
    assert state(project) == created, "nothing forgotten, nothing added"
    assert len(fake.requests_matching("POST", "/servers")) == servers and len(fake.leases()) == 1

    down = cham(project, "teardown")
    assert down.returncode == 0, down.stderr
    assert f"server {created['servers'][0]['id']} was already gone" in down.stdout
    assert f"deleted {ref(created)}" in down.stdout
    assert fake.is_empty() and state(project) == {}


@pytest.mark.slow
def test_lease_deleted_outside_is_named(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    fake.delete_lease(created["lease_id"])
    line = one_line(cham(project, "provision"))
    assert line.startswith(f"chameleon: {ref(created)} was deleted outside reprostack; `snakemake -c1 ")
    assert fake.leases() == [] and fake.requests_matching("POST", "/leases")[1:] == []
    down = cham(project, "teardown")
    assert down.returncode == 0, down.stderr
    assert f"{ref(created)} was already gone" in down.stdout and state(project) == {}


@pytest.mark.slow
def test_lease_deleted_while_waiting_ends_the_wait(project: Project, fake: FakeChameleon) -> None:
    fake.lease_final_status = None  # stays PENDING
    project.set_config("chameleon.lease_timeout_minutes", 10)
    proc = subprocess.Popen(["python", "workflow/scripts/chameleon.py", "provision"], cwd=project.path,
                            env=project.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(200):
            if state(project).get("lease_id"):
                break
            time.sleep(0.05)
        created = state(project)
        time.sleep(0.3)  # in the wait
        fake.delete_lease(created["lease_id"])
        deleted = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert time.monotonic() - deleted < 10, "stopped at once, not after lease_timeout_minutes"
    assert proc.returncode != 0 and "Traceback" not in err
    assert f"chameleon: lease {created['lease_name']}: PENDING" in out
    assert err.strip().splitlines() == [
        f"chameleon: {ref(created)} was deleted outside reprostack; `snakemake -c1 teardown` clears "
        "the state file, then `snakemake -c1 provision` makes a new lease"
    ]


@pytest.mark.slow
def test_pending_lease_is_said_with_its_start(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    later = now + dt.timedelta(hours=3)
    fake.set_lease(created["lease_id"], status="PENDING", start=later, end=later + dt.timedelta(hours=4))
    line = one_line(cham(project, "provision"))
    assert line == (
        f"chameleon: {ref(created)} is PENDING until {later:%Y-%m-%d %H:%M} UTC (3.0 h from now, beyond "
        "chameleon.lease_timeout_minutes: 30); run `snakemake -c1 provision` again then, or "
        "`snakemake -c1 teardown` to give it up"
    )
    soon = now + dt.timedelta(minutes=2)  # within the wait: said, then waited for
    fake.gets_to_transition = 2  # the first look still sees PENDING
    fake.set_lease(created["lease_id"], status="PENDING", start=soon)
    again = cham(project, "provision")
    assert again.returncode == 0, again.stderr
    assert f"chameleon: {ref(created)} is PENDING; it starts at {soon:%Y-%m-%d %H:%M} UTC" in again.stdout
    assert re.search(rf"lease {created['lease_name']}: STARTING -> ACTIVE", again.stdout)


# ---------------------------------------------------------------------------------------- servers
@pytest.mark.slow
def test_server_deleted_outside_is_replaced_with_its_ip(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    fake.delete_server(created["servers"][0]["id"])
    again = cham(project, "provision")
    assert again.returncode == 0, again.stderr
    [lease] = fake.leases()
    gone = created["servers"][0]["id"]
    said = (f"chameleon: server {gone} was deleted outside reprostack; {ref(created)} is "
            f"still ACTIVE (until {utc(lease['end_date'])}): launching a new server on it")
    assert said in again.stdout.splitlines()
    [server] = fake.servers()
    now = state(project)
    assert now == {**created, "servers": [replaced(created, server, fake)]}
    assert server["id"] != created["servers"][0]["id"]
    [fip] = fake.floating_ips()
    assert fip["floating_ip_address"] == created["floating_ip"]
    [port] = [p for p in fake.ports() if p["id"] == fip["port_id"]]
    assert port["device_id"] == server["id"], "the recorded IP follows the new server"
    assert f"floating IP {created['floating_ip']} attached to server {server['id']}" in again.stdout
    assert len(fake.leases()) == 1 and len(fake.requests_matching("POST", "/leases")) == 1


@pytest.mark.slow
def test_server_in_error_is_one_line(project: Project, fake: FakeChameleon) -> None:
    fake.server_final_status = "ERROR"
    failed = cham(project, "provision")
    sid = state(project)["servers"][0]["id"]
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"chameleon: server {sid} is in ERROR (No valid host was found. ); "
                                    "it will not be reused")


# ---------------------------------------------------------------------------------------- teardown
@pytest.mark.slow
def test_teardown_asks_only_the_site_the_state_names(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    before = (project.path / ".chameleon" / "state.json").read_bytes()
    other = {**project.env, "OS_REGION_NAME": "KVM@TACC"}
    assert one_line(cham(project, "teardown", env=other)) == (
        "chameleon: the state file names resources at CHI@UC, but the credentials say "
        "OS_REGION_NAME=KVM@TACC; use CHI@UC's openrc (nothing was changed)"
    )
    unnamed = {k: v for k, v in project.env.items() if k != "OS_REGION_NAME"}
    fake.region = "KVM@TACC"  # credentials that name no region, whose catalog is another site's
    try:
        line = one_line(cham(project, "teardown", env=unnamed))
    finally:
        fake.region = "CHI@UC"
    assert line == ("chameleon: the state file names resources at CHI@UC, but the credentials' service "
                    "catalog is for KVM@TACC; use CHI@UC's openrc (nothing was changed)")
    assert (project.path / ".chameleon" / "state.json").read_bytes() == before
    assert deletes(fake) == []
    assert [lease["id"] for lease in fake.leases()] == [created["lease_id"]]
    assert [server["id"] for server in fake.servers()] == [created["servers"][0]["id"]]
    assert cham(project, "teardown").returncode == 0 and fake.is_empty()


@pytest.mark.slow
def test_teardown_failing_midway_keeps_what_remains(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    project.set_config("chameleon.server_timeout_minutes", 0.01)
    fake.fail_deletes = {"server"}  # the node is not cleaned: the server sits in ERROR
    line = one_line(cham(project, "teardown"))
    assert line.startswith(f"chameleon: server {created['servers'][0]['id']} (being deleted) was still ERROR "
                           "after waiting 1 s (want GONE); still held at CHI@UC: ")
    assert line.endswith(f"{ref(created)}, server {created['servers'][0]['id']}, floating IP "
                         f"{created['floating_ip']} (kept in .chameleon/state.json); "
                         "run `snakemake -c1 teardown` again to finish")
    assert state(project) == created and len(fake.leases()) == 1

    fake.fail_deletes = {"lease"}
    with fake.lock:
        fake._servers[created["servers"][0]["id"]]["status"] = "ACTIVE"
    line = one_line(cham(project, "teardown"))
    assert line.startswith(f"chameleon: could not delete {ref(created)}: ")
    assert line.endswith(f"; still held at CHI@UC: {ref(created)} (kept in .chameleon/state.json); "
                         "run `snakemake -c1 teardown` again to finish")
    assert state(project) == {k: created[k] for k in ("lease_id", "lease_name", "site")}
    assert fake.servers() == [] and fake.floating_ips() == [] and len(fake.leases()) == 1

    fake.fail_deletes = {"lease-silently"}  # accepted, yet the lease lives on: not forgotten
    line = one_line(cham(project, "teardown"))
    assert line.startswith(f"chameleon: {ref(created)} is still ACTIVE after Blazar accepted its deletion")
    assert state(project)["lease_id"] == created["lease_id"]

    fake.fail_deletes = set()
    down = cham(project, "teardown")
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip().splitlines() == [f"chameleon: deleted {ref(created)}"]
    assert fake.is_empty() and state(project) == {}


@pytest.mark.slow
def test_uncollected_run_blocks_teardown_until_forced(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    path = project.path / ".chameleon" / "state.json"
    run = {"finished_at": "2026-11-26T17:00:00+00:00", "commit": "0123456789abcdef0123", "run_id": "r1",
           "collected": False, "unsaved": ["MLflow run r1", "models", "results"]}
    path.write_text(json.dumps({**created, "remote_run": run}))
    before, asked = path.read_bytes(), len(fake.requests)
    assert one_line(cham(project, "teardown")) == (
        "chameleon: not tearing down: the run that finished on the node at 2026-11-26T17:00:00+00:00 "
        "(commit 0123456789ab) has not been collected: MLflow run r1, models, results; run "
        "`snakemake -c1 collect` first, or `snakemake -c1 teardown_force` to release the node anyway "
        "(those are lost)"
    )
    assert path.read_bytes() == before and len(fake.requests) == asked, "nothing asked of the site"
    assert len(fake.servers()) == 1 and len(fake.leases()) == 1

    forced = project.run("snakemake", "-c1", "teardown_force")
    assert ("chameleon: tearing down anyway (--force): the run that finished on the node at "
            "2026-11-26T17:00:00+00:00 (commit 0123456789ab) was not collected; lost: MLflow run r1, "
            "models, results") in forced.stdout
    assert fake.is_empty() and not path.exists()

    created = provisioned(project)
    path.write_text(json.dumps({**created, "remote_run": {**run, "collected": True}}))
    down = cham(project, "teardown")
    assert down.returncode == 0, down.stderr
    assert fake.is_empty() and not path.exists()


# ---------------------------------------------------------------------------------------- extend
@pytest.mark.slow
def test_extend_prolongs_the_active_lease(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    [lease] = fake.leases()
    old = dt.datetime.strptime(lease["end_date"], FMT)
    project.set_config("chameleon.extend_hours", 3)
    done = project.run("snakemake", "-c1", "extend")
    [lease] = fake.leases()
    new = dt.datetime.strptime(lease["end_date"], FMT)
    # As `openstack reservation lease update --prolong-for`: blazarclient sends the end to the minute.
    assert new == (old + dt.timedelta(hours=3)).replace(second=0, microsecond=0)
    [put] = fake.requests_matching("PUT", f"/leases/{created['lease_id']}")
    assert put["body"] == {"end_date": f"{new:%Y-%m-%d %H:%M}"}
    assert (f"chameleon: {ref(created)} extended by 3 h: ends at {new:%Y-%m-%d %H:%M} UTC "
            f"(was {old:%Y-%m-%d %H:%M} UTC)") in done.stdout
    assert state(project) == created and lease["status"] == "ACTIVE"

    project.set_config("chameleon.extend_hours", None)  # default: duration_hours (4)
    assert "extended by 4 h" in cham(project, "extend").stdout
    [lease] = fake.leases()
    assert dt.datetime.strptime(lease["end_date"], FMT) == (new + dt.timedelta(hours=4)).replace(second=0)


@pytest.mark.slow
def test_extend_refuses_outside_the_policy(project: Project, fake: FakeChameleon) -> None:
    assert one_line(cham(project, "extend")) == (
        "chameleon: nothing to extend: .chameleon/state.json names no lease "
        "(`snakemake -c1 provision` makes one)"
    )
    assert fake.requests == []
    created = provisioned(project)
    [lease] = fake.leases()
    end = dt.datetime.strptime(lease["end_date"], FMT)

    project.set_config("chameleon.extend_hours", 166)  # ~170 h from now: past the 7 days
    line = one_line(cham(project, "extend"))
    assert line.startswith(f"chameleon.extend_hours: 166 would end {ref(created)} at ")
    assert "more than 168 h from now (CHI@UC's limit); accepted now: more than 0 and at most 16" in line
    with pytest.raises(SystemExit, match=r"chameleon\.extend_hours: 200 is outside CHI@UC's limit; "
                                         r"accepted: more than 0 and at most 168"):
        load_module().settings({"chameleon": {"site": "CHI@UC", "node_type": "gpu_p100",
                                              "extend_hours": 200}})

    project.set_config("chameleon.extend_hours", 2)
    far = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=72)
    fake.set_lease(created["lease_id"], end=far)
    line = one_line(cham(project, "extend"))
    assert line == (f"chameleon: {ref(created)} ends at {far:%Y-%m-%d %H:%M} UTC; Chameleon prolongs a "
                    "lease only in its last 48 h: run `snakemake -c1 extend` after "
                    f"{far - dt.timedelta(hours=48):%Y-%m-%d %H:%M} UTC")
    fake.set_lease(created["lease_id"], end=end)

    fake.refuse_updates = "Not enough hosts available"
    line = one_line(cham(project, "extend"))
    assert line.startswith(f"chameleon: Blazar at CHI@UC refused to prolong {ref(created)} by 2 h: ")
    assert "Not enough hosts available" in line and line.endswith(f"still ends at {end:%Y-%m-%d %H:%M} UTC")
    fake.refuse_updates = None

    fake.gets_to_transition = 100  # stays PENDING
    fake.set_lease(created["lease_id"], status="PENDING")
    assert one_line(cham(project, "extend")).startswith(f"chameleon: {ref(created)} is PENDING, not ACTIVE")
    fake.end_lease(created["lease_id"])
    assert " ended at " in one_line(cham(project, "extend"))
    puts = fake.requests_matching("PUT", "/leases/")
    assert puts and {r["status"] for r in puts} == {409}, "only the request Blazar refused was sent"
    assert dt.datetime.strptime(fake.leases()[0]["end_date"], FMT) <= end


@pytest.mark.slow
def test_fake_blazar_updates_leases_as_blazar_does(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    token = requests.post(fake.auth_url + "/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": fake.username, "password": fake.password}}}}},
        timeout=10).headers["X-Subject-Token"]
    url = f"{fake.url}/reservation/v1/leases/{created['lease_id']}"

    def put(body: dict) -> requests.Response:
        return requests.put(url, json=body, headers={"X-Auth-Token": token}, timeout=10)

    end = dt.datetime.strptime(fake.leases()[0]["end_date"], FMT)
    assert put({"prolong_for": "2h"}).status_code == 200
    assert dt.datetime.strptime(fake.leases()[0]["end_date"], FMT) == end + dt.timedelta(hours=2)
    assert put({"prolong_for": "8d"}).status_code == 400, "more than 7 days at once"
    fake.set_lease(created["lease_id"], end=end + dt.timedelta(hours=60))
    assert "within 172800 seconds" in put({"prolong_for": "1h"}).json()["error_message"]
    fake.end_lease(created["lease_id"])
    refused = put({"prolong_for": "1h"})
    assert refused.status_code == 409 and "TERMINATED" in refused.json()["error_message"]
    assert fake.servers() == [] and fake.flavors_named("reservation:") == []


@pytest.mark.slow
def test_plan_names_the_lease(project: Project, fake: FakeChameleon) -> None:
    created = provisioned(project)
    plan = cham(project, "plan").stdout
    assert f"reuse .chameleon/state.json ({ref(created)}, server {created['servers'][0]['id']})" in plan
    assert "extend:    +4 h with `snakemake -c1 extend`, in the last 48 h of the lease" in plan


@pytest.fixture(scope="module")
def kvm_fake() -> Iterator[FakeChameleon]:
    with FakeChameleon(password="right-password", region="KVM@TACC") as server:
        yield server


@pytest.mark.slow
def test_kvm_server_deleted_outside_gets_group_and_ip_back(
    tmp_path_factory: pytest.TempPathFactory, kvm_fake: FakeChameleon
) -> None:
    kvm_fake.add_keypair(KEY)
    project = made(tmp_path_factory.mktemp("kvm"), kvm_fake, "chameleon_site=KVM@TACC", "node_type=m1.large")
    created = provisioned(project)
    kvm_fake.delete_server(created["servers"][0]["id"])
    again = cham(project, "provision")
    assert again.returncode == 0, again.stderr
    gone = created["servers"][0]["id"]
    assert f"server {gone} was deleted outside reprostack; {ref(created)} is still ACTIVE" \
        in again.stdout
    [server] = kvm_fake.servers()
    assert state(project) == {**created, "servers": [replaced(created, server, kvm_fake)]}
    [lease] = kvm_fake.leases()
    [reservation] = lease["reservations"]
    assert server["flavor"]["original_name"] == f"reservation:{reservation['id']}", "on the lease's flavor"
    [group] = kvm_fake.security_groups()
    assert group["id"] == created["security_group_id"]
    assert {"name": group["name"]} in server["security_groups"], "the group follows the new server"
    [fip] = kvm_fake.floating_ips()
    [port] = [p for p in kvm_fake.ports() if p["id"] == fip["port_id"]]
    assert (fip["floating_ip_address"], port["device_id"]) == (created["floating_ip"], server["id"])
    assert cham(project, "teardown").returncode == 0 and kvm_fake.is_empty()
