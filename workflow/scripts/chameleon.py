"""Chameleon provisioning with python-chi: plan, provision and teardown, driven by Snakemake rules.

    python workflow/scripts/chameleon.py plan        # what would be reserved, where, for how long
    python workflow/scripts/chameleon.py provision   # lease + server + floating IP, wait for SSH
    python workflow/scripts/chameleon.py teardown    # delete exactly what the state file names

Everything created is written to the state file (.chameleon/state.json, gitignored) as soon as it
exists, by id; a rerun looks resources up by those ids (never by name, which python-chi's own
idempotency does) and creates nothing twice. python-chi swallows several failures (a lease that
cannot be made, a wait that ends in ERROR); this module surfaces their real cause.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".chameleon" / "state.json"
SITES = {"CHI@TACC": "bare-metal", "CHI@UC": "bare-metal", "KVM@TACC": "kvm"}
NODE_TYPES = {
    "gpu_rtx_6000": "nvidia",
    "gpu_a100_pcie": "nvidia",
    "gpu_p100": "nvidia",
    "gpu_mi100": "amd",
    "compute_skylake": "cpu",
    "compute_cascadelake_r": "cpu",
}
FLAVORS = {"g1.h100.pci.1": "nvidia", "m1.xlarge": "cpu", "m1.large": "cpu"}  # KVM@TACC
IMAGES = {"nvidia": "CC-Ubuntu24.04-CUDA", "amd": "CC-Ubuntu24.04-ROCm", "cpu": "CC-Ubuntu24.04"}
CREDENTIAL_SETS = (
    ("OS_USERNAME", "OS_PASSWORD"),
    ("OS_APPLICATION_CREDENTIAL_ID", "OS_APPLICATION_CREDENTIAL_SECRET"),
)


class ChameleonError(SystemExit):
    """A provisioning failure with its real cause, in one message."""


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The chameleon section with defaults, validated: errors list what is accepted."""
    cham = {
        "count": 1,
        "duration_hours": 4,
        "lease_timeout_minutes": 30,
        "server_timeout_minutes": 30,
        "ssh_timeout_minutes": 15,
        "poll_seconds": 10,
        "key_name": None,
        "openrc": None,
        **config.get("chameleon", {}),
    }
    site, node_type = cham.get("site"), cham.get("node_type")
    if site not in SITES:
        raise ChameleonError(f"chameleon.site: '{site}' is not known; accepted: {', '.join(SITES)}")
    known = FLAVORS if SITES[site] == "kvm" else NODE_TYPES
    if node_type not in known:
        kind = "flavor" if SITES[site] == "kvm" else "node type"
        raise ChameleonError(
            f"chameleon.node_type: '{node_type}' is not a known {kind} at {site}; "
            f"accepted: {', '.join(known)}"
        )
    cham["kind"] = SITES[site]
    cham["accelerator"] = known[node_type]
    cham["image"] = cham.get("image") or IMAGES[cham["accelerator"]]
    if cham["image"] not in IMAGES.values():
        raise ChameleonError(
            f"chameleon.image: '{cham['image']}' is not known; accepted: {', '.join(IMAGES.values())}"
        )
    return cham


def load_openrc(path: Path) -> None:
    """`export OS_X=value` lines from an openrc file into the environment (values already set win)."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            if key.startswith("OS_") and value and not value.startswith("$("):
                os.environ.setdefault(key, shlex.split(value)[0] if value.strip() else "")


def check_credentials(cham: dict[str, Any]) -> None:
    """Name every missing OS_* variable before anything is asked of the testbed."""
    if cham.get("openrc"):
        openrc = Path(cham["openrc"]).expanduser()
        openrc = openrc if openrc.is_absolute() else ROOT / openrc
        if not openrc.is_file():
            raise ChameleonError(f"chameleon.openrc: '{cham['openrc']}' is not a file")
        load_openrc(openrc)
    missing = [name for name in ("OS_AUTH_URL",) if not os.environ.get(name)]
    if not (os.environ.get("OS_PROJECT_ID") or os.environ.get("OS_PROJECT_NAME")):
        missing.append("OS_PROJECT_ID (or OS_PROJECT_NAME)")
    if not any(all(os.environ.get(v) for v in pair) for pair in CREDENTIAL_SETS):
        have_user = bool(os.environ.get("OS_USERNAME"))
        missing.append(
            "OS_PASSWORD" if have_user else "OS_USERNAME and OS_PASSWORD (or an application credential)"
        )
    if missing:
        raise ChameleonError(
            "chameleon: credentials missing: "
            + ", ".join(missing)
            + ". Source your project's openrc file (or set chameleon.openrc in config/config.yaml)."
        )
    os.environ.setdefault("OS_REGION_NAME", cham["site"])
    os.environ.setdefault(
        "OS_AUTH_TYPE",
        "v3applicationcredential" if os.environ.get("OS_APPLICATION_CREDENTIAL_ID") else "v3password",
    )
    os.environ.setdefault("OS_INTERFACE", "public")
    os.environ.setdefault("OS_IDENTITY_API_VERSION", "3")
    import chi.context

    chi.context.reset()
    from keystoneauth1 import exceptions as ks

    try:
        chi.context.session().get_token()
    except ks.Unauthorized:
        raise ChameleonError(
            f"chameleon: Keystone at {os.environ['OS_AUTH_URL']} rejected the credentials "
            "(expired application credential or wrong password); nothing was reserved"
        ) from None
    except ks.ConnectFailure as error:
        raise ChameleonError(
            f"chameleon: cannot reach Keystone at {os.environ['OS_AUTH_URL']}: {error}"
        ) from None


def read_state() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def write_state(state: dict[str, Any]) -> None:
    STATE.parent.mkdir(exist_ok=True)
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE)


class _Captured(logging.Handler):
    """python-chi logs the real reason a lease failed, then raises a generic error."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _explain(messages: list[str], cham: dict[str, Any], name: str) -> str:
    text = " ".join(messages).lower()
    if "not enough hosts" in text or "not enough resources" in text:
        return (
            f"no capacity: Chameleon has not enough free {cham['node_type']} nodes at "
            f"{cham['site']} for {cham['count']} node(s) over {cham['duration_hours']} h; "
            "try another node type, a shorter lease, or later"
        )
    if "already exists" in text:
        return f"a lease named '{name}' already exists in this project"
    return messages[-1] if messages else "python-chi gave no reason"


def _poll(what: str, get_status, timeout_s: float, interval: float, wanted: str) -> str:
    start = time.monotonic()
    while True:
        status = get_status()
        if status in (wanted, "ERROR"):
            return status
        if time.monotonic() - start >= timeout_s:
            raise ChameleonError(
                f"chameleon: {what} was still {status} after waiting {timeout_s:.0f} s "
                f"(want {wanted}); it is recorded in {STATE.relative_to(ROOT)}, run teardown to delete it"
            )
        time.sleep(interval)


def ensure_lease(cham: dict[str, Any], state: dict[str, Any], project: str) -> Any:
    import chi.lease
    from chi.clients import blazar
    from chi.exception import ResourceError

    if state.get("lease_id"):
        lease = chi.lease.Lease(lease_json=blazar().lease.get(state["lease_id"]))
        print(f"chameleon: reusing lease {lease.id} ({lease.status})")
    else:
        name = f"{project}-{secrets.token_hex(3)}"
        lease = chi.lease.Lease(name, duration=timedelta(hours=cham["duration_hours"]))
        lease.add_node_reservation(amount=cham["count"], node_type=cham["node_type"])
        lease.add_fip_reservation(amount=1)
        captured = _Captured()
        logger = logging.getLogger("chi.lease")
        logger.addHandler(captured)
        try:
            lease.submit(wait_for_active=False, show=None, idempotent=False, retry_on_error=False)
        except ResourceError as error:
            cause = error.args[0] if error.args else error
            if "401" in str(cause) or "Unauthorized" in type(cause).__name__:
                raise ChameleonError("chameleon: the reservation service rejected the credentials") from None
            raise ChameleonError(
                f"chameleon: could not make lease '{name}': {_explain(captured.messages, cham, name)}"
            ) from None
        finally:
            logger.removeHandler(captured)
        state.update(lease_id=lease.id, lease_name=name, site=cham["site"])
        write_state(state)
        print(f"chameleon: created lease {name} ({lease.id})")
    status = _poll(
        f"lease {lease.id}",
        lambda: _lease_status(lease.id),
        cham["lease_timeout_minutes"] * 60,
        cham["poll_seconds"],
        "ACTIVE",
    )
    if status == "ERROR":
        raise ChameleonError(
            f"chameleon: lease {lease.id} is in ERROR; it will not be reused. "
            "Run teardown, then provision again"
        )
    return chi.lease.Lease(lease_json=blazar().lease.get(lease.id))


def _lease_status(lease_id: str) -> str:
    from chi.clients import blazar

    return blazar().lease.get(lease_id)["status"]


def ensure_server(cham: dict[str, Any], state: dict[str, Any], lease: Any) -> Any:
    import chi.server
    from chi.clients import nova

    if state.get("server_id"):
        server = chi.server.Server._from_nova_server(nova().servers.get(state["server_id"]))
        print(f"chameleon: reusing server {server.id} ({server.status})")
    else:
        reservation = lease.node_reservations[0]
        name = f"{state['lease_name']}-node"
        server = chi.server.Server(
            name,
            reservation_id=reservation["id"],
            image_name=cham["image"],
            key_name=cham["key_name"] or os.environ.get("OS_KEYPAIR_NAME"),
            flavor_name="baremetal",
        )
        server.submit(wait_for_active=False, show=None, idempotent=False, retry_on_error=False)
        server.refresh()  # python-chi sets the id only by looking the name up
        state["server_id"] = server.id
        write_state(state)
        print(f"chameleon: created server {name} ({server.id}) from {cham['image']}")
    status = _poll(
        f"server {server.id}",
        lambda: nova().servers.get(server.id).status,
        cham["server_timeout_minutes"] * 60,
        cham["poll_seconds"],
        "ACTIVE",
    )
    if status == "ERROR":
        fault = getattr(nova().servers.get(server.id), "fault", {}) or {}
        raise ChameleonError(
            f"chameleon: server {server.id} is in ERROR ({fault.get('message', 'no fault')}); "
            "it will not be reused. Run teardown, then provision again"
        )
    return chi.server.Server._from_nova_server(nova().servers.get(server.id))


def ensure_floating_ip(cham: dict[str, Any], state: dict[str, Any], lease: Any, server: Any) -> str:
    if state.get("floating_ip"):
        return state["floating_ip"]
    reserved = lease.get_reserved_floating_ips()
    if reserved:
        address = reserved[0]
    else:
        import chi.network

        address = chi.network.get_free_floating_ip()["floating_ip_address"]
    server.associate_floating_ip(address)
    state["floating_ip"] = address
    write_state(state)
    print(f"chameleon: floating IP {address} attached")
    return address


def wait_for_ssh(address: str, timeout_s: float, interval: float) -> float:
    if os.environ.get("REPROSTACK_RUNNER") == "local":
        return 0.0  # tests point the command runner at a local shell
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with socket.socket() as sock:
            sock.settimeout(5)
            if sock.connect_ex((address, 22)) == 0:
                return time.monotonic() - start
        time.sleep(interval)
    raise ChameleonError(f"chameleon: SSH on {address}:22 did not answer after waiting {timeout_s:.0f} s")


def provision(config: dict[str, Any]) -> dict[str, Any]:
    cham = settings(config)
    if cham["kind"] == "kvm":
        # A flavor reservation and the security group KVM needs before SSH answers are not
        # implemented (nor testable against tests/fake_chameleon.py) yet: refuse rather than guess.
        raise ChameleonError("chameleon.site: KVM@TACC provisioning is not supported yet; accepted: "
                             "CHI@TACC, CHI@UC (bare metal)")
    check_credentials(cham)
    state = read_state()
    if state.get("site") and state["site"] != cham["site"]:
        raise ChameleonError(
            f"chameleon: the state file names resources at {state['site']}, the config "
            f"says {cham['site']}; run teardown first"
        )
    lease = ensure_lease(cham, state, config["project"]["name"])
    server = ensure_server(cham, state, lease)
    address = ensure_floating_ip(cham, state, lease, server)
    waited = wait_for_ssh(address, cham["ssh_timeout_minutes"] * 60, cham["poll_seconds"])
    print(f"chameleon: ready: ssh cc@{address} (SSH answered after {waited:.0f} s)")
    return state


def teardown(config: dict[str, Any]) -> list[str]:
    """Delete the server, release the floating IP, delete the lease: what the state names, nothing else."""
    state = read_state()
    if not state:
        print("chameleon: nothing to tear down (no state file)")
        return []
    check_credentials(
        settings(
            {
                **config,
                "chameleon": {
                    **config.get("chameleon", {}),
                    "site": state.get("site", config["chameleon"]["site"]),
                },
            }
        )
    )
    import chi.network
    from chi.clients import blazar, nova
    from novaclient.exceptions import NotFound

    report = []
    if state.get("server_id"):
        try:
            nova().servers.delete(state["server_id"])
            report.append(f"deleted server {state['server_id']}")
        except NotFound:
            report.append(f"server {state['server_id']} was already gone")
        state.pop("server_id")
        write_state(state)
    if state.get("floating_ip"):
        found = [
            f for f in chi.network.list_floating_ips() if f["floating_ip_address"] == state["floating_ip"]
        ]
        if found:
            chi.network.deallocate_floating_ip(state["floating_ip"])
            report.append(f"released floating IP {state['floating_ip']}")
        else:
            report.append(f"floating IP {state['floating_ip']} was already released")
        state.pop("floating_ip")
        write_state(state)
    if state.get("lease_id"):
        try:
            blazar().lease.delete(state["lease_id"])
            report.append(f"deleted lease {state['lease_id']}")
        except Exception as error:  # blazarclient raises its own type, with the code in kwargs
            code = getattr(error, "kwargs", {}).get("code", getattr(error, "code", None))
            if code != 404:
                raise ChameleonError(
                    f"chameleon: could not delete lease {state['lease_id']}: {error}"
                ) from None
            report.append(f"lease {state['lease_id']} was already gone")
    STATE.unlink()
    for line in report:
        print(f"chameleon: {line}")
    return report


def plan(config: dict[str, Any]) -> str:
    cham = settings(config)
    state = read_state()
    reserve = (
        f"{cham['count']} x flavor {cham['node_type']}"
        if cham["kind"] == "kvm"
        else f"{cham['count']} x {cham['node_type']} bare-metal node(s) + 1 floating IP"
    )
    lines = [
        f"site:      {cham['site']} ({cham['kind']})",
        f"reserve:   {reserve}",
        f"for:       {cham['duration_hours']} h from now",
        f"image:     {cham['image']} ({cham['accelerator']})",
        f"lease:     {config['project']['name']}-<random>",
        "state:     "
        + (
            f"reuse {STATE.relative_to(ROOT)} (lease {state.get('lease_id')}, "
            f"server {state.get('server_id')})"
            if state
            else "nothing created yet"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _step import load_config

    config = load_config()
    action = argv[0] if argv else "plan"
    if action == "plan":
        print(plan(config))
    elif action == "provision":
        provision(config)
    elif action == "teardown":
        teardown(config)
    else:
        raise ChameleonError(f"chameleon: unknown action '{action}'; accepted: plan, provision, teardown")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
