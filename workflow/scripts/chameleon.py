"""Chameleon provisioning with python-chi: plan, provision and teardown, driven by Snakemake rules.

    python workflow/scripts/chameleon.py plan        # what would be reserved, where, for how long
    python workflow/scripts/chameleon.py provision   # lease + chameleon.count servers + one floating
                                                     # IP (+ security group on KVM), wait for SSH
    python workflow/scripts/chameleon.py teardown    # delete exactly what the state file names
    python workflow/scripts/chameleon.py teardown --force   # ... even if a remote run was not collected
    python workflow/scripts/chameleon.py extend      # prolong the active lease by chameleon.extend_hours
    python workflow/scripts/chameleon.py check       # credentials and the site checks; reserves nothing

Everything created is written to the state file (.chameleon/state.json, gitignored) as soon as it
exists, by id; a rerun looks resources up by those ids (never by name, which python-chi's own
idempotency does) and creates nothing twice. python-chi swallows several failures (a lease that
cannot be made, a wait that ends in ERROR); this module surfaces their real cause.

Several nodes (chameleon.count > 1, for a torchrun over nodes): one lease reserves them, one server
is launched per node on its reservation, and only the first gets the floating IP (they are scarce);
the others are reached through it as an SSH jump host, and the nodes reach each other on their
private addresses (sharednet1), which the state file records: the first node's is the rendezvous.

Bare metal (CHI@TACC, CHI@UC): a node reservation plus a floating-IP reservation; the node's
firewalld already lets SSH in, and `chameleon.open_ports` are opened there by `configure`.
KVM@TACC: a flavor reservation (Blazar makes a private flavor "reservation:<id>" that the server
must be launched on), an allocated floating IP, and a security group of our own for SSH and
`chameleon.open_ports`, since KVM lets nothing in by default; the group is the firewall there, and
nothing on a KVM instance depends on firewalld.

Credentials, as Chameleon hands them out: an application credential (OS_AUTH_TYPE=
v3applicationcredential; it carries its own project, and Keystone refuses it any scope), the
password openrc (v3oidcpassword through Chameleon's identity provider; the password comes from
OS_PASSWORD or is asked for on the terminal, never stored), or plain v3password OS_* variables.
Before a lease is asked for, the key pair, the image, the node type or flavor, the credentials'
region and the duration are checked at the site; each failure is one line naming its field.
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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

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
AUTH_TYPES = ("v3applicationcredential", "v3oidcpassword", "v3password")
# Variables that ask Keystone for a project scope. An application credential is bound to its
# project, and Keystone answers any scoped request with 401 "Application credentials cannot request
# a scope", so they are dropped (in this process only) when one is used.
PROJECT_SCOPE = ("OS_PROJECT_ID", "OS_PROJECT_NAME", "OS_PROJECT_DOMAIN_ID", "OS_PROJECT_DOMAIN_NAME",
                 "OS_TENANT_ID", "OS_TENANT_NAME", "OS_DOMAIN_ID", "OS_DOMAIN_NAME")
# Chameleon's lease policy: "resource reservations (leases) are limited to a duration of 7 days";
# an active lease can be prolonged near its end, and a longer one needs a one-time exception from the
# help desk (ChameleonCloud/docs, source/technical/reservations.rst, section "lease-policy").
MAX_LEASE_HOURS = {"CHI@TACC": 7 * 24, "CHI@UC": 7 * 24, "KVM@TACC": 7 * 24}
# Prolonging, same section: "an active lease within 48 hours of its end time can be prolonged by up
# to 7 days from the moment of request if resources are available". Blazar enforces it on update
# (ChameleonCloud/blazar, blazar/enforcement/filters/max_lease_duration_filter.py: an update that
# moves the end later is refused before `reservation_extension_window` of the current end, and the
# added time counts against max_lease_duration). `extend` checks both before asking.
EXTENSION_WINDOW_HOURS = 48
TEARDOWN = "snakemake -c1 teardown"
PROVISION = "snakemake -c1 provision"
# Blazar lease states after which a lease gives nothing more (GONE: Blazar answers 404).
LEASE_ENDED = ("TERMINATING", "TERMINATED")
LEASE_DELETED = ("DELETING", "GONE")
LEASE_STOPS = ("ERROR", *LEASE_ENDED, *LEASE_DELETED)


class ChameleonError(SystemExit):
    """A provisioning failure with its real cause, in one message."""


class Settled(ChameleonError):
    """A failure whose message already says what is held and what to do: provision adds nothing."""


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """The chameleon section with defaults, validated: errors list what is accepted."""
    cham = {
        "count": 1,
        "duration_hours": 4,
        "lease_timeout_minutes": 30,
        "server_timeout_minutes": 30,
        "ssh_timeout_minutes": 15,
        "poll_seconds": 10,
        "extend_hours": None,
        "key_name": None,
        "openrc": None,
        "open_ports": [],
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
    hours, limit = cham["duration_hours"], MAX_LEASE_HOURS[site]
    if not isinstance(hours, int | float) or isinstance(hours, bool) or not 0 < hours <= limit:
        raise ChameleonError(
            f"chameleon.duration_hours: {hours!r} is outside {site}'s lease limit; accepted: more than 0 "
            f"and at most {limit} (Chameleon's leases last at most 7 days; prolong an active one instead)"
        )
    extend = cham["extend_hours"] if cham["extend_hours"] is not None else hours
    if not isinstance(extend, int | float) or isinstance(extend, bool) or not 0 < extend <= limit:
        raise ChameleonError(
            f"chameleon.extend_hours: {extend!r} is outside {site}'s limit; accepted: more than 0 and "
            f"at most {limit} (Chameleon prolongs a lease by at most 7 days at a time)"
        )
    cham["extend_hours"] = extend
    ports = cham["open_ports"]
    bad = [p for p in ports if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535]
    if bad:
        raise ChameleonError(
            f"chameleon.open_ports: {bad[0]!r} is not a port; accepted: TCP port numbers 1 to 65535"
        )
    cham["ingress_ports"] = [22, *sorted(set(ports) - {22})]  # SSH always; the rest opt-in
    cham["accelerator"] = known[node_type]
    cham["image"] = cham.get("image") or IMAGES[cham["accelerator"]]
    if cham["image"] not in IMAGES.values():
        raise ChameleonError(
            f"chameleon.image: '{cham['image']}' is not known; accepted: {', '.join(IMAGES.values())}"
        )
    return cham


def load_openrc(path: Path) -> None:
    """`export OS_X=value` lines from an openrc file into the environment (values already set win).

    Values the shell would compute are skipped, never taken literally. Chameleon's password openrc
    (the "OpenStack RC File" its sites hand out, e.g. CHI-<project>-openrc.sh) reads the password
    with `read -sr OS_PASSWORD_INPUT`, then runs `export OS_PASSWORD=$OS_PASSWORD_INPUT`; it sets
    OS_AUTH_TYPE=v3oidcpassword, OS_IDENTITY_PROVIDER=chameleon, OS_PROTOCOL=openid,
    OS_DISCOVERY_ENDPOINT=https://auth.chameleoncloud.org/auth/realms/chameleon/.well-known/
    openid-configuration, OS_CLIENT_ID=keystone-<site>-prod, OS_CLIENT_SECRET=none,
    OS_ACCESS_TOKEN_TYPE=access_token, OS_USERNAME, OS_PROJECT_ID and OS_REGION_NAME (shape as found
    in public copies, e.g. github.com/inference-serving/LLM-serving-with-proxy-models CHI-241297-openrc.sh).
    """
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export ") :].partition("=")
        key, value = key.strip(), value.strip()
        if not key.startswith("OS_") or ("$" in value and not value.startswith("'")):
            continue  # `$VAR`, `$(cmd)`: the shell's to expand, not a value
        try:
            words = shlex.split(value, comments=True)
        except ValueError:
            continue
        if words:
            os.environ.setdefault(key, words[0])


def _auth_type() -> str:
    chosen = os.environ.get("OS_AUTH_TYPE")
    if chosen:
        return chosen
    return "v3applicationcredential" if os.environ.get("OS_APPLICATION_CREDENTIAL_ID") else "v3password"


def _ask_password() -> str:
    """OS_PASSWORD for the password openrc: asked on the terminal, kept in this process only."""
    user = os.environ.get("OS_USERNAME", "")
    if not sys.stdin.isatty():
        raise ChameleonError(
            "chameleon: credentials missing: OS_PASSWORD (not set, and no terminal to ask on); "
            "export OS_PASSWORD, or source your openrc in this shell (it asks for the password)"
        )
    import getpass

    password = getpass.getpass(f"Chameleon password for {user}: ")
    if not password:
        raise ChameleonError("chameleon: credentials missing: OS_PASSWORD (nothing was typed)")
    return password


def check_credentials(cham: dict[str, Any]) -> None:
    """Name every missing OS_* variable before anything is asked of the testbed, then authenticate
    and check that the credentials are for chameleon.site."""
    if cham.get("openrc"):
        openrc = Path(cham["openrc"]).expanduser()
        openrc = openrc if openrc.is_absolute() else ROOT / openrc
        if not openrc.is_file():
            raise ChameleonError(f"chameleon.openrc: '{cham['openrc']}' is not a file")
        load_openrc(openrc)
    auth = _auth_type()
    if auth not in AUTH_TYPES:
        raise ChameleonError(
            f"chameleon: OS_AUTH_TYPE '{auth}' is not supported; accepted: {', '.join(AUTH_TYPES)}"
        )
    if os.environ.get("OS_PASSWORD", "").startswith("$"):
        del os.environ["OS_PASSWORD"]  # an openrc's `$OS_PASSWORD_INPUT`, copied without the shell
    env = os.environ.get
    missing = [] if env("OS_AUTH_URL") else ["OS_AUTH_URL"]
    if auth == "v3applicationcredential":
        named = env("OS_APPLICATION_CREDENTIAL_NAME") and env("OS_USERNAME")
        if not (env("OS_APPLICATION_CREDENTIAL_ID") or named):
            missing.append("OS_APPLICATION_CREDENTIAL_ID")
        if not env("OS_APPLICATION_CREDENTIAL_SECRET"):
            missing.append("OS_APPLICATION_CREDENTIAL_SECRET")
        for name in PROJECT_SCOPE:
            os.environ.pop(name, None)
    else:
        needed = ["OS_USERNAME"]
        if auth == "v3oidcpassword":
            needed += ["OS_IDENTITY_PROVIDER", "OS_PROTOCOL", "OS_CLIENT_ID"]
            if not (env("OS_DISCOVERY_ENDPOINT") or env("OS_ACCESS_TOKEN_ENDPOINT")):
                needed.append("OS_DISCOVERY_ENDPOINT")
        missing += [name for name in needed if not env(name)]
        if not (env("OS_PROJECT_ID") or env("OS_PROJECT_NAME")):
            missing.append("OS_PROJECT_ID (or OS_PROJECT_NAME)")
    if missing:
        raise ChameleonError(
            "chameleon: credentials missing: "
            + ", ".join(missing)
            + ". Source your project's openrc file (or set chameleon.openrc in config/config.yaml)."
        )
    password = None if auth == "v3applicationcredential" or env("OS_PASSWORD") else _ask_password()
    os.environ.setdefault("OS_REGION_NAME", cham["site"])
    os.environ["OS_AUTH_TYPE"] = auth
    os.environ.setdefault("OS_INTERFACE", "public")
    os.environ.setdefault("OS_IDENTITY_API_VERSION", "3")
    import chi.context

    chi.context.reset()
    if password:
        chi.context.set("password", password)  # in memory only: never in the environment or a file
    from keystoneauth1 import exceptions as ks

    adapter = chi.context.session()
    session = getattr(adapter, "session", adapter)
    try:
        access = session.auth.get_access(session)
    except ks.Unauthorized:
        why = (
            "application credential: wrong, expired or revoked"
            if auth == "v3applicationcredential"
            else f"{auth}: wrong username or password"
        )
        raise ChameleonError(
            f"chameleon: Keystone at {os.environ['OS_AUTH_URL']} rejected the credentials "
            f"({why}); nothing was reserved"
        ) from None
    except ks.ConnectFailure as error:
        raise ChameleonError(
            f"chameleon: cannot reach Keystone at {os.environ['OS_AUTH_URL']}: {error}"
        ) from None
    except ks.ClientException as error:  # the identity provider's side of the password openrc
        raise ChameleonError(f"chameleon: authentication ({auth}) failed: {error}") from None
    _check_region(cham, access)


def _check_region(cham: dict[str, Any], access: Any) -> None:
    """The credentials must be for chameleon.site: each Chameleon site has its own Keystone, and the
    token's service catalog names the region its endpoints are in."""
    site, named = cham["site"], os.environ.get("OS_REGION_NAME")
    if cham.get("state_site"):  # acting on what the state file names: only its site's answer counts
        if named != site:
            raise ChameleonError(
                f"chameleon: the state file names resources at {site}, but the credentials say "
                f"OS_REGION_NAME={named}; use {site}'s openrc (nothing was changed)"
            )
    elif named != site:
        raise ChameleonError(
            f"chameleon.site: '{site}', but the credentials say OS_REGION_NAME={named}; "
            f"use {site}'s openrc, or set chameleon.site to {named}"
        )
    regions = {
        endpoint.get("region_id") or endpoint.get("region")
        for kind, endpoints in access.service_catalog.get_endpoints(interface="public").items()
        if kind in ("reservation", "compute")
        for endpoint in endpoints
    } - {None}
    if regions and site not in regions and cham.get("state_site"):
        raise ChameleonError(
            f"chameleon: the state file names resources at {site}, but the credentials' service "
            f"catalog is for {', '.join(sorted(regions))}; use {site}'s openrc (nothing was changed)"
        )
    if regions and site not in regions:
        raise ChameleonError(
            f"chameleon.site: '{site}', but the credentials' service catalog is for "
            f"{', '.join(sorted(regions))}; use {site}'s openrc, or set chameleon.site accordingly"
        )


def preflight(cham: dict[str, Any]) -> None:
    """What the site must have before a lease is asked for: the key pair, the image, the node type
    (bare metal) or flavor (KVM). Every failure is reported, one line each, and nothing is reserved."""
    from chi.clients import blazar, glance, nova
    from novaclient.exceptions import NotFound

    site, failures = cham["site"], []
    key = cham["key_name"] or os.environ.get("OS_KEYPAIR_NAME")
    if not key:
        failures.append(
            f"chameleon.key_name: not set; name a key pair of yours at {site} (or set OS_KEYPAIR_NAME)"
        )
    else:
        try:
            nova().keypairs.get(key)
        except NotFound:
            have = sorted(k.name for k in nova().keypairs.list())
            failures.append(
                f"chameleon.key_name: key pair '{key}' does not exist at {site}; "
                f"yours there: {', '.join(have) or 'none'} (key pairs are per site)"
            )
    if not list(glance().images.list(filters={"name": cham["image"]})):
        failures.append(f"chameleon.image: image '{cham['image']}' does not exist at {site}")
    if cham["kind"] == "kvm":
        offered = _public_flavors()
        if cham["node_type"] not in offered:
            failures.append(
                f"chameleon.node_type: flavor '{cham['node_type']}' is not offered at {site}; "
                f"it offers: {', '.join(sorted(offered))}"
            )
    else:
        try:
            hosts = blazar().host.list()
        except Exception as error:  # blazarclient's own types; the lease request would still tell
            print(f"chameleon: note: could not list {site}'s hosts ({error}); node type not checked")
            hosts = []
        types = sorted({h["node_type"] for h in hosts if h.get("node_type")})
        if types and cham["node_type"] not in types:
            failures.append(
                f"chameleon.node_type: node type '{cham['node_type']}' is not offered at {site}; "
                f"it offers: {', '.join(types)}"
            )
    if failures:
        raise ChameleonError(
            "\n".join(failures) + f"\nchameleon: {len(failures)} check(s) failed; nothing was reserved"
        )


def read_state() -> dict[str, Any]:
    """The state file; one written before multi-node leases (`server_id`) reads as a one-node list."""
    state = json.loads(STATE.read_text()) if STATE.exists() else {}
    if "server_id" in state:
        server_id = state.pop("server_id")
        if server_id:
            state.setdefault("servers", [{"id": server_id}])
    return state


def servers(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The leased nodes, first (rank 0, the floating IP's) first: each {id, name, private_address}."""
    return list(state.get("servers") or [])


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
        what = "instances of flavor" if cham["kind"] == "kvm" else "nodes of type"
        return (
            f"no capacity: Chameleon has not enough free {what} {cham['node_type']} at "
            f"{cham['site']} for {cham['count']} over {cham['duration_hours']} h; "
            f"try another {'flavor' if cham['kind'] == 'kvm' else 'node type'}, a shorter lease, or later"
        )
    if "already exists" in text:
        return f"a lease named '{name}' already exists in this project"
    return messages[-1] if messages else "python-chi gave no reason"


HEARTBEAT_S = 60.0  # a wait says it is still waiting at least this often


def _poll(
    what: str,
    get_status: Callable[[], str],
    timeout_s: float,
    interval: float,
    wanted: str,
    stops: tuple[str, ...] = ("ERROR",),
    hint: str = f"; it is recorded in {STATE.relative_to(ROOT)}, run teardown to delete it",
) -> str:
    """Poll until `wanted` or a status in `stops` (returned at once: waiting on would only run out
    the timeout), printing each status change and a heartbeat while none comes."""
    start = time.monotonic()
    last, said = None, start
    while True:
        status = get_status()
        now = time.monotonic()
        if status != last:
            change = f"{last} -> {status}" if last is not None else status
            print(f"chameleon: {what}: {change} ({now - start:.0f} s)", flush=True)
            last, said = status, now
        elif now - said >= HEARTBEAT_S:
            print(f"chameleon: {what}: still {status} ({now - start:.0f} s, want {wanted})", flush=True)
            said = now
        if status == wanted or status in stops:
            return status
        if time.monotonic() - start >= timeout_s:
            raise ChameleonError(
                f"chameleon: {what} was still {status} after waiting {timeout_s:.0f} s "
                f"(want {wanted}){hint}"
            )
        time.sleep(interval)


def _lease_ref(state: dict[str, Any], lease: Any = None) -> str:
    """A lease in messages: by name, id in parentheses."""
    name = state.get("lease_name") or getattr(lease, "name", None) or "?"
    return f"lease {name} ({state.get('lease_id') or getattr(lease, 'id', '?')})"


def _when(value: Any) -> datetime | None:
    """A Blazar date (UTC, naive) from the API's text, or None."""
    if isinstance(value, datetime):
        return value
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(str(value).removesuffix("Z"), fmt)
        except ValueError:
            continue
    return None


def _show(value: Any) -> str:
    when = _when(value)
    return f"{when:%Y-%m-%d %H:%M} UTC" if when else str(value)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # Blazar's dates are naive UTC


def _blazar_code(error: Exception) -> int | None:
    """blazarclient raises its own type, with the HTTP code in kwargs."""
    return getattr(error, "kwargs", {}).get("code", getattr(error, "code", None))


def _get_lease(lease_id: str) -> dict[str, Any] | None:
    """Blazar's view of the lease, or None when Blazar no longer has it (404)."""
    from chi.clients import blazar

    try:
        return blazar().lease.get(lease_id)
    except Exception as error:
        if _blazar_code(error) == 404:
            return None
        raise


def _lease_status(lease_id: str) -> str:
    found = _get_lease(lease_id)
    return found["status"] if found else "GONE"


def _start_over(state: dict[str, Any]) -> str:
    """What to do once the lease is of no more use: teardown releases the rest, provision starts anew."""
    rest = _held({k: v for k, v in state.items() if k not in ("lease_id", "servers")})
    release = f"releases what is left ({rest}) and clears" if rest else "clears"
    return f"`{TEARDOWN}` {release} the state file, then `{PROVISION}` makes a new lease"


def _lease_stopped(state: dict[str, Any], status: str, found: dict[str, Any] | None) -> NoReturn:
    """One line for a lease that will never be (or is no longer) ACTIVE."""
    ref = _lease_ref(state)
    if status in LEASE_ENDED:
        raise Settled(
            f"chameleon: {ref} ended at {_show((found or {}).get('end_date'))} ({status}); "
            f"{_start_over(state)}"
        )
    if status in LEASE_DELETED:
        raise Settled(f"chameleon: {ref} was deleted outside reprostack; {_start_over(state)}")
    raise ChameleonError(
        f"chameleon: {ref} is in ERROR; it will not be reused. Run teardown, then provision again"
    )


def _pending(cham: dict[str, Any], state: dict[str, Any], found: dict[str, Any]) -> None:
    """A lease that starts later: said with its start time; beyond the wait, said and left alone."""
    start = _when(found.get("start_date"))
    if start is None:
        return
    ahead = start - _utcnow()
    if ahead > timedelta(minutes=cham["lease_timeout_minutes"]):
        raise Settled(
            f"chameleon: {_lease_ref(state)} is PENDING until {_show(start)} "
            f"({ahead.total_seconds() / 3600:.1f} h from now, beyond chameleon.lease_timeout_minutes: "
            f"{cham['lease_timeout_minutes']}); run `{PROVISION}` again then, or `{TEARDOWN}` to give it up"
        )
    print(f"chameleon: {_lease_ref(state)} is PENDING; it starts at {_show(start)}")


def ensure_lease(cham: dict[str, Any], state: dict[str, Any], project: str) -> Any:
    import chi.lease
    from chi.clients import blazar
    from chi.exception import ResourceError

    if state.get("lease_id"):
        found = _get_lease(state["lease_id"])
        status = found["status"] if found else "GONE"
        if status in LEASE_STOPS:
            _lease_stopped(state, status, found)
        lease = chi.lease.Lease(lease_json=found)
        print(f"chameleon: reusing {_lease_ref(state)} ({status})")
        if status == "PENDING":
            _pending(cham, state, found)
    else:
        name = f"{project}-{secrets.token_hex(3)}"
        lease = chi.lease.Lease(name, duration=timedelta(hours=cham["duration_hours"]))
        if cham["kind"] == "kvm":
            lease.add_flavor_reservation(id=_flavor_id(cham), amount=cham["count"])
        else:
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
        print(f"chameleon: created {_lease_ref(state)}")
    status = _poll(
        f"lease {state.get('lease_name') or lease.id}",
        lambda: _lease_status(lease.id),
        cham["lease_timeout_minutes"] * 60,
        cham["poll_seconds"],
        "ACTIVE",
        stops=LEASE_STOPS,
    )
    if status != "ACTIVE":
        _lease_stopped(state, status, _get_lease(lease.id))
    return chi.lease.Lease(lease_json=blazar().lease.get(lease.id))


def _public_flavors() -> dict[str, str]:
    """Flavor name -> id, without the private "reservation:<id>" flavors leases make."""
    from chi.clients import nova

    return {f.name: f.id for f in nova().flavors.list() if not f.name.startswith("reservation:")}


def _flavor_id(cham: dict[str, Any]) -> str:
    """The public flavor to reserve; a site without it is named with the flavors it has."""
    flavors = _public_flavors()
    if cham["node_type"] not in flavors:
        raise ChameleonError(
            f"chameleon.node_type: flavor '{cham['node_type']}' is not offered at {cham['site']}; "
            f"it offers: {', '.join(sorted(flavors))}"
        )
    return flavors[cham["node_type"]]


def ensure_servers(cham: dict[str, Any], state: dict[str, Any], lease: Any) -> list[Any]:
    """chameleon.count servers on the lease, each recorded by id as soon as it exists; all are
    launched before any is waited for, so the nodes boot together. Each ACTIVE one's private
    address (its fixed IP, on sharednet1) is recorded: the first node's is the rendezvous."""
    from chi.clients import nova

    nodes = servers(state)
    reserved = _reserved_amount(cham, lease)
    if len(nodes) > cham["count"] or (reserved is not None and reserved != cham["count"]):
        raise ChameleonError(
            f"chameleon.count: {cham['count']}, but {_lease_ref(state, lease)} reserves "
            f"{reserved if reserved is not None else '?'} node(s) and the state file names {len(nodes)}; "
            f"run `{TEARDOWN}`, then `{PROVISION}` for the new count"
        )
    for rank in range(cham["count"]):
        name = f"{state['lease_name']}-node" + (f"-{rank}" if cham["count"] > 1 else "")
        if rank < len(nodes):
            status = _server_status(nodes[rank]["id"])
            if status != "GONE":
                print(f"chameleon: reusing server {nodes[rank]['id']} ({status})")
                continue
            # The lease is ACTIVE (ensure_lease saw to it): its reservation takes a new server, in
            # the same place (rank) as the one that went.
            print(
                f"chameleon: server {nodes[rank]['id']} was deleted outside reprostack; "
                f"{_lease_ref(state, lease)} is still ACTIVE (until {_show(lease.end_date)}): "
                "launching a new server on it"
            )
            nodes.pop(rank)
            state["servers"] = nodes
            write_state(state)
        nodes.insert(rank, {"id": _create_server(cham, state, lease, name), "name": name})
        state["servers"] = nodes
        write_state(state)
        print(f"chameleon: created server {name} ({nodes[rank]['id']}) from {cham['image']}")
    for node in nodes:
        _wait_active(cham, state, lease, node["id"])
        found = nova().servers.get(node["id"])
        node.update(name=found.name, private_address=_private_address(found))
    state["servers"] = nodes
    write_state(state)
    return [_server_obj(node["id"]) for node in nodes]


def _reserved_amount(cham: dict[str, Any], lease: Any) -> int | None:
    """How many nodes (or instances) the lease reserves; None when Blazar does not say."""
    found = lease.flavor_reservations if cham["kind"] == "kvm" else lease.node_reservations
    amount = (found[0].get("min") or found[0].get("amount")) if found else None
    return int(amount) if amount else None


def _create_server(cham: dict[str, Any], state: dict[str, Any], lease: Any, name: str) -> str:
    """One server on the lease's reservation; its id (python-chi finds it by name)."""
    import chi.server

    if cham["kind"] == "kvm":
        # Launch on the lease's own flavor: naming the public flavor would boot an on-demand
        # instance outside the reservation (it works, which is what makes it a trap).
        reserved = lease.get_reserved_flavors()
        if not reserved:
            raise ChameleonError(
                f"chameleon: {_lease_ref(state, lease)} has no reserved flavor; run teardown"
            )
        placement = {"flavor_name": reserved[0].name}
    else:
        placement = {"reservation_id": lease.node_reservations[0]["id"], "flavor_name": "baremetal"}
    server = chi.server.Server(
        name,
        image_name=cham["image"],
        key_name=cham["key_name"] or os.environ.get("OS_KEYPAIR_NAME"),
        **placement,
    )
    server.submit(wait_for_active=False, show=None, idempotent=False, retry_on_error=False)
    server.refresh()  # python-chi sets the id only by looking the name up
    return str(server.id)


def _wait_active(cham: dict[str, Any], state: dict[str, Any], lease: Any, server_id: str) -> None:
    from chi.clients import nova

    status = _poll(
        f"server {server_id}",
        lambda: _server_status(server_id),
        cham["server_timeout_minutes"] * 60,
        cham["poll_seconds"],
        "ACTIVE",
        stops=("ERROR", "GONE"),
    )
    if status == "GONE":
        raise ChameleonError(
            f"chameleon: server {server_id} was deleted while it started (outside reprostack); "
            f"run `{PROVISION}` again to launch a new one on {_lease_ref(state, lease)}"
        )
    if status == "ERROR":
        fault = getattr(nova().servers.get(server_id), "fault", {}) or {}
        raise ChameleonError(
            f"chameleon: server {server_id} is in ERROR ({fault.get('message', 'no fault')}); "
            "it will not be reused. Run teardown, then provision again"
        )


def _server_obj(server_id: str) -> Any:
    import chi.server
    from chi.clients import nova

    return chi.server.Server._from_nova_server(nova().servers.get(server_id))


def _private_address(found: Any) -> str | None:
    """The server's fixed IP (sharednet1 first): where the other nodes reach it."""
    addresses = getattr(found, "addresses", None) or {}
    for network in sorted(addresses, key=lambda name: name != "sharednet1"):
        for entry in addresses[network]:
            if entry.get("OS-EXT-IPS:type", "fixed") == "fixed" and entry.get("version", 4) == 4:
                return str(entry["addr"])
    return None


def ensure_security_group(cham: dict[str, Any], state: dict[str, Any], nodes: list[Any]) -> None:
    """KVM only: a group of our own, recorded by id, attached to every server. Its rules follow
    SSH + chameleon.open_ports on every run, so a changed port list needs no new server; with
    several nodes it also lets in everything from its own members (torchrun's rendezvous and the
    collective backend's ports), since KVM lets nothing in by default."""
    from chi.clients import neutron, nova
    from neutronclient.common.exceptions import NotFound

    group = None
    if state.get("security_group_id"):
        try:
            group = neutron().show_security_group(state["security_group_id"])["security_group"]
        except NotFound:
            print(f"chameleon: security group {state['security_group_id']} is gone; making a new one")
    if group is None:
        group = neutron().create_security_group(
            {"security_group": {"name": f"{state['lease_name']}-ingress",
                                "description": "reprostack: SSH and chameleon.open_ports"}}
        )["security_group"]
        state["security_group_id"] = group["id"]
        write_state(state)
        print(f"chameleon: created security group {group['name']} ({group['id']})")
    have = {
        rule["port_range_min"]: rule["id"]
        for rule in group.get("security_group_rules", [])
        if rule.get("direction") == "ingress" and rule.get("protocol") == "tcp"
        and rule.get("port_range_min") == rule.get("port_range_max")
    }
    for port in (p for p in cham["ingress_ports"] if p not in have):
        neutron().create_security_group_rule(
            {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress",
                                     "ethertype": "IPv4", "protocol": "tcp",
                                     "port_range_min": port, "port_range_max": port}}
        )
        print(f"chameleon: security group lets in tcp {port}")
    for port, rule_id in have.items():
        if port not in cham["ingress_ports"]:
            neutron().delete_security_group_rule(rule_id)
            print(f"chameleon: security group no longer lets in tcp {port}")
    members = [rule for rule in group.get("security_group_rules", [])
               if rule.get("direction") == "ingress" and rule.get("remote_group_id") == group["id"]]
    if len(nodes) > 1 and not members:
        neutron().create_security_group_rule(
            {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress",
                                     "ethertype": "IPv4", "remote_group_id": group["id"]}}
        )
        print("chameleon: security group lets the nodes reach each other (any port)")
    for server in nodes:
        attached = {g["name"] for g in getattr(nova().servers.get(server.id), "security_groups", [])}
        if group["name"] not in attached:
            # By id: Nova resolves a name or an id, and a name may be shared with other groups.
            nova().servers.add_security_group(server.id, group["id"])
            print(f"chameleon: security group {group['name']} attached to server {server.id}")


def ensure_floating_ip(cham: dict[str, Any], state: dict[str, Any], lease: Any, server: Any) -> str:
    """The lease's reserved IP (bare metal), else one allocated for us; recorded before attaching."""
    address = state.get("floating_ip")
    if not address:
        address = _new_floating_ip(cham, state, lease)
        state["floating_ip"] = address
        write_state(state)
    found = _floating_ip(address)
    if found is None:
        raise ChameleonError(
            f"chameleon: floating IP {address} named in {STATE.relative_to(ROOT)} is gone; "
            "run teardown, then provision again"
        )
    if _port_device(found.get("port_id")) == server.id:
        print(f"chameleon: reusing floating IP {address}")
    else:  # new, or left behind by a server deleted outside reprostack
        server.associate_floating_ip(address)
        print(f"chameleon: floating IP {address} attached to server {server.id}")
    return address


def _port_device(port_id: str | None) -> str | None:
    """The server a port belongs to (None: no port, or the port is gone with its server)."""
    from chi.clients import neutron
    from neutronclient.common.exceptions import NotFound

    if not port_id:
        return None
    try:
        return neutron().show_port(port_id)["port"].get("device_id")
    except NotFound:
        return None


def _floating_ip(address: str) -> dict[str, Any] | None:
    from chi.clients import neutron

    found = [f for f in neutron().list_floatingips()["floatingips"] if f["floating_ip_address"] == address]
    return found[0] if found else None


def _new_floating_ip(cham: dict[str, Any], state: dict[str, Any], lease: Any) -> str:
    reserved = lease.get_reserved_floating_ips()
    if reserved:
        address = reserved[0]
    else:
        import chi.network
        from chi.clients import neutron
        from neutronclient.common.exceptions import NeutronClientException

        try:
            created = neutron().create_floatingip(
                {"floatingip": {"floating_network_id": chi.network.get_network_id("public"),
                                "description": f"reprostack {state['lease_name']}"}}
            )["floatingip"]
        except NeutronClientException as error:
            raise ChameleonError(
                f"chameleon: could not allocate a floating IP at {cham['site']} "
                f"(the project's quota may be used up): {error}"
            ) from None
        address = created["floating_ip_address"]
    return address


def wait_for_ssh(address: str, timeout_s: float, interval: float) -> float:
    if os.environ.get("REPROSTACK_RUNNER") == "local":
        return 0.0  # tests point the command runner at a local shell
    start = time.monotonic()
    said = start
    print(f"chameleon: waiting for SSH on {address}:22 (up to {timeout_s:.0f} s)", flush=True)
    while time.monotonic() - start < timeout_s:
        with socket.socket() as sock:
            sock.settimeout(5)
            if sock.connect_ex((address, 22)) == 0:
                return time.monotonic() - start
        if time.monotonic() - said >= HEARTBEAT_S:
            said = time.monotonic()
            print(f"chameleon: SSH on {address}:22: no answer yet ({said - start:.0f} s)", flush=True)
        time.sleep(interval)
    raise ChameleonError(f"chameleon: SSH on {address}:22 did not answer after waiting {timeout_s:.0f} s")


def check_nodes(config: dict[str, Any]) -> None:
    """One node per torchrun node: chameleon.count must be train.distributed.nnodes before anything
    is leased (the config check alone lets count 1 with nnodes > 1 pass, for clusters of other kinds)."""
    from config_check import nodes_problem

    problem = nodes_problem(config, leasing=True)
    if problem:
        raise ChameleonError(problem)


def provision(config: dict[str, Any]) -> dict[str, Any]:
    cham = settings(config)
    check_nodes(config)
    check_credentials(cham)
    state = read_state()
    if state.get("site") and state["site"] != cham["site"]:
        raise ChameleonError(
            f"chameleon: the state file names resources at {state['site']}, the config "
            f"says {cham['site']}; run teardown first"
        )
    if not state.get("lease_id"):
        preflight(cham)  # nothing is reserved unless every check passes
    try:
        lease = ensure_lease(cham, state, config["project"]["name"])
        nodes = ensure_servers(cham, state, lease)
        if cham["kind"] == "kvm":
            ensure_security_group(cham, state, nodes)
        address = ensure_floating_ip(cham, state, lease, nodes[0])
        waited = wait_for_ssh(address, cham["ssh_timeout_minutes"] * 60, cham["poll_seconds"])
    except (Exception, ChameleonError, KeyboardInterrupt) as error:
        held = _held(state)
        if not held or isinstance(error, Settled):
            raise
        message = (
            str(error) if isinstance(error, ChameleonError) else f"chameleon: {type(error).__name__}: {error}"
        )
        raise ChameleonError(
            f"{message}\nchameleon: still held at {state.get('site', cham['site'])}: {held}; "
            f"release them with `{TEARDOWN}`"
        ) from None
    print(f"chameleon: ready: ssh cc@{address} (SSH answered after {waited:.0f} s)")
    for rank, node in enumerate(servers(state)[1:], start=1):
        # One floating IP: the other nodes are reached through the first (as Chameleon users do).
        print(f"chameleon: node {rank}: {node['name']} at {node['private_address']}: "
              f"ssh -J cc@{address} cc@{node['private_address']}")
    return state


def _held(state: dict[str, Any]) -> str:
    """What the state file says exists at the site, in words."""
    held = []
    if state.get("lease_id"):
        held.append(_lease_ref(state))
    held += [f"server {node['id']}" for node in servers(state)]
    if state.get("floating_ip"):
        held.append(f"floating IP {state['floating_ip']}")
    if state.get("security_group_id"):
        held.append(f"security group {state['security_group_id']}")
    return ", ".join(held)


def check(config: dict[str, Any]) -> None:
    """The checks provision makes before reserving, and nothing else."""
    cham = settings(config)
    check_nodes(config)
    check_credentials(cham)
    preflight(cham)
    print(
        f"chameleon: checks passed at {cham['site']} ({os.environ['OS_AUTH_TYPE']}): key pair, image "
        f"{cham['image']}, {'flavor' if cham['kind'] == 'kvm' else 'node type'} {cham['node_type']}, "
        f"{cham['duration_hours']} h within the lease limit; nothing was reserved"
    )


def teardown(config: dict[str, Any], force: bool = False) -> list[str]:
    """Delete the servers, release the floating IP, delete the lease: what the state names, nothing
    else, and only at the site it names. Each resource leaves the state file once the site confirms
    it is gone, so a failure midway leaves exactly what remains, for a rerun to finish."""
    state = read_state()
    if not state:
        print("chameleon: nothing to tear down (no state file)")
        return []
    _refuse_uncollected(state, force)
    site = state.get("site", config["chameleon"]["site"])  # where the resources are, whatever the config says
    cham = settings({**config, "chameleon": {**config.get("chameleon", {}), "site": site}})
    cham["state_site"] = True  # "already gone" means something only from the site that held it
    check_credentials(cham)
    report: list[str] = []

    def done(line: str) -> None:  # printed as it happens, so a failure midway still says what went
        report.append(line)
        print(f"chameleon: {line}")

    try:
        _teardown_servers(cham, state, done)
        _teardown_floating_ip(state, done)
        if state.get("security_group_id"):
            done(_delete_security_group(state["security_group_id"]))
            _forget(state, "security_group_id")
        _teardown_lease(state, done)
    except (Exception, ChameleonError, KeyboardInterrupt) as error:
        held = _held(state)
        message = (
            str(error) if isinstance(error, ChameleonError) else f"chameleon: {type(error).__name__}: {error}"
        )
        if not held:
            raise ChameleonError(message) from None
        raise ChameleonError(
            f"{message.rstrip('.')}; still held at {site}: {held} (kept in {STATE.relative_to(ROOT)}); "
            f"run `{TEARDOWN}` again to finish"
        ) from None
    STATE.unlink()
    return report


def _refuse_uncollected(state: dict[str, Any], force: bool) -> None:
    """A run that finished on the node but was not brought back lives only on the node: releasing
    the node loses it, so only --force does that. Nothing is asked of the site before this."""
    run = state.get("remote_run")
    if not run or run.get("collected"):
        return
    lost = ", ".join(run.get("unsaved") or []) or "its outputs"
    commit = str(run.get("commit") or "?")[:12]
    what = f"the run that finished on the node at {run.get('finished_at', '?')} (commit {commit})"
    # provisional: remote_run stopped after the pipeline but before the export; a rerun exports
    # (train is up to date on the node) and collect then works.
    first = ("`snakemake -c1 remote_run` (it exports and pushes what the node holds), then `snakemake -c1 "
             "collect`" if run.get("provisional") else "`snakemake -c1 collect`")
    if not force:
        raise ChameleonError(
            f"chameleon: not tearing down: {what} has not been collected: {lost}; run "
            f"{first} first, or `snakemake -c1 teardown_force` to release the node "
            "anyway (those are lost)"
        )
    print(f"chameleon: tearing down anyway (--force): {what} was not collected; lost: {lost}")


def _forget(state: dict[str, Any], key: str) -> None:
    state.pop(key, None)
    write_state(state)


def _teardown_servers(cham: dict[str, Any], state: dict[str, Any], done: Callable[[str], None]) -> None:
    """Delete every server, then wait for Nova's 404 on each: a server being deleted is still alive
    (and holds its security group and the node). Each leaves the state file once it is gone."""
    from chi.clients import nova
    from novaclient.exceptions import NotFound

    lines = {}
    for node in servers(state):  # all deletes first: bare-metal nodes take minutes to clean
        try:
            nova().servers.delete(node["id"])
            lines[node["id"]] = f"deleted server {node['id']}"
        except NotFound:
            lines[node["id"]] = f"server {node['id']} was already gone"
    for node in servers(state):
        server_id = node["id"]
        _poll(f"server {server_id} (being deleted)", lambda sid=server_id: _server_status(sid),
              cham["server_timeout_minutes"] * 60, cham["poll_seconds"], "GONE", stops=(), hint="")
        done(lines[server_id])
        state["servers"] = [n for n in servers(state) if n["id"] != server_id]
        if not state["servers"]:
            state.pop("servers")
        write_state(state)


def _teardown_floating_ip(state: dict[str, Any], done: Callable[[str], None]) -> None:
    from chi.clients import neutron

    address = state.get("floating_ip")
    if not address:
        return
    found = _floating_ip(address)
    if found:
        neutron().delete_floatingip(found["id"])
        if _floating_ip(address):
            raise ChameleonError(f"chameleon: floating IP {address} is still allocated after its release")
        done(f"released floating IP {address}")
    else:
        done(f"floating IP {address} was already released")
    _forget(state, "floating_ip")


def _teardown_lease(state: dict[str, Any], done: Callable[[str], None]) -> None:
    """Delete, then ask Blazar again: only a lease it no longer has, or has ended or is deleting,
    leaves the state file."""
    from chi.clients import blazar

    if not state.get("lease_id"):
        return
    ref = _lease_ref(state)
    try:
        blazar().lease.delete(state["lease_id"])
        line = f"deleted {ref}"
    except Exception as error:
        if _blazar_code(error) != 404:
            raise ChameleonError(f"chameleon: could not delete {ref}: {error}") from None
        line = f"{ref} was already gone"
    status = _lease_status(state["lease_id"])
    if status not in ("GONE", "TERMINATED", "DELETING"):
        raise ChameleonError(f"chameleon: {ref} is still {status} after Blazar accepted its deletion")
    done(line)
    _forget(state, "lease_id")


def _server_status(server_id: str) -> str:
    """Nova's status for the server, or GONE once it no longer exists."""
    from chi.clients import nova
    from novaclient.exceptions import NotFound

    try:
        return nova().servers.get(server_id).status
    except NotFound:
        return "GONE"


def _delete_security_group(group_id: str) -> str:
    from chi.clients import neutron
    from neutronclient.common.exceptions import Conflict, NotFound

    try:
        neutron().delete_security_group(group_id)
    except NotFound:
        return f"security group {group_id} was already gone"
    except Conflict as error:
        raise ChameleonError(f"chameleon: security group {group_id} is still in use: {error}") from None
    return f"deleted security group {group_id}"


def plan(config: dict[str, Any]) -> str:
    cham = settings(config)
    check_nodes(config)
    state = read_state()
    ports = ", ".join(map(str, cham["ingress_ports"]))
    reserve = (
        f"{cham['count']} x flavor {cham['node_type']} (virtual machine) + 1 floating IP "
        f"+ a security group letting in tcp {ports}"
        if cham["kind"] == "kvm"
        else f"{cham['count']} x {cham['node_type']} bare-metal node(s) + 1 floating IP; "
        f"firewalld lets in tcp {ports}"
    )
    if cham["count"] > 1:  # floating IPs are scarce: one, and the other nodes behind it
        reserve += (f"; the floating IP is the first node's, the other {cham['count'] - 1} are reached "
                    "through it (ssh -J) and reach each other on sharednet1")
    lines = [
        f"site:      {cham['site']} ({cham['kind']})",
        f"reserve:   {reserve}",
        f"for:       {cham['duration_hours']} h from now",
        f"image:     {cham['image']} ({cham['accelerator']})",
        f"lease:     {config['project']['name']}-<random>",
        f"extend:    +{cham['extend_hours']} h with `snakemake -c1 extend`, in the last "
        f"{EXTENSION_WINDOW_HOURS} h of the lease, up to {MAX_LEASE_HOURS[cham['site']]} h from then",
        "state:     "
        + (
            f"reuse {STATE.relative_to(ROOT)} ({_lease_ref(state)}, "
            + (", ".join(f"server {node['id']}" for node in servers(state)) or "no server yet")
            + ")"
            if state.get("lease_id")
            else "nothing created yet"
        ),
    ]
    return "\n".join(lines)


def extend(config: dict[str, Any]) -> tuple[datetime, datetime]:
    """Prolong the ACTIVE lease the state names by chameleon.extend_hours, within Chameleon's policy
    (see EXTENSION_WINDOW_HOURS); the old and new end are printed and returned."""
    state = read_state()
    if not state.get("lease_id"):
        raise ChameleonError(
            f"chameleon: nothing to extend: {STATE.relative_to(ROOT)} names no lease "
            f"(`{PROVISION}` makes one)"
        )
    site = state.get("site", config["chameleon"]["site"])
    cham = settings({**config, "chameleon": {**config.get("chameleon", {}), "site": site}})
    cham["state_site"] = True
    check_credentials(cham)
    found = _get_lease(state["lease_id"])
    status = found["status"] if found else "GONE"
    if status != "ACTIVE":
        if status in LEASE_STOPS:
            _lease_stopped(state, status, found)
        raise ChameleonError(
            f"chameleon: {_lease_ref(state)} is {status}, not ACTIVE: Chameleon prolongs only an active "
            f"lease; run `{PROVISION}` until it is ACTIVE, then extend"
        )
    old_end = _when(found["end_date"])
    new_end = _check_extension(cham, state, old_end)
    minutes = round(cham["extend_hours"] * 60)
    from chi.clients import blazar

    try:  # as `openstack reservation lease update --prolong-for`: blazarclient sends the new end_date
        updated = blazar().lease.update(state["lease_id"], prolong_for=f"{minutes}m")
    except Exception as error:
        raise ChameleonError(
            f"chameleon: Blazar at {site} refused to prolong {_lease_ref(state)} by "
            f"{cham['extend_hours']} h: {error}; it still ends at {_show(old_end)}"
        ) from None
    new_end = _when(updated.get("end_date")) or new_end
    print(f"chameleon: {_lease_ref(state)} extended by {cham['extend_hours']} h: ends at "
          f"{_show(new_end)} (was {_show(old_end)})")
    return old_end, new_end


def _check_extension(cham: dict[str, Any], state: dict[str, Any], old_end: datetime) -> datetime:
    """Chameleon's rule, before Blazar is asked: within the last 48 h, and to at most 7 days from now."""
    now, limit = _utcnow(), MAX_LEASE_HOURS[cham["site"]]
    opens = old_end - timedelta(hours=EXTENSION_WINDOW_HOURS)
    if now < opens:
        raise ChameleonError(
            f"chameleon: {_lease_ref(state)} ends at {_show(old_end)}; Chameleon prolongs a lease only "
            f"in its last {EXTENSION_WINDOW_HOURS} h: run `snakemake -c1 extend` after {_show(opens)}"
        )
    new_end = old_end + timedelta(hours=cham["extend_hours"])
    if new_end - now > timedelta(hours=limit):
        room = max(0.0, (now + timedelta(hours=limit) - old_end).total_seconds() / 3600)
        raise ChameleonError(
            f"chameleon.extend_hours: {cham['extend_hours']} would end {_lease_ref(state)} at "
            f"{_show(new_end)}, more than {limit} h from now ({cham['site']}'s limit); accepted now: "
            f"more than 0 and at most {int(room * 10) / 10:g}"
        )
    return new_end


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from _step import load_config, log_to

    config = load_config()
    action, options = (argv[0], argv[1:]) if argv else ("plan", [])
    rules = {"check": "check_site", "teardown": "teardown_force" if options == ["--force"] else "teardown"}
    if action in ("plan", "provision", "teardown", "extend", "check"):
        log_to(rules.get(action, action))  # the rule's log: (workflow/rules/provision.smk)
    # neutronclient warns on every client it makes; the noise would bury the lines that matter.
    logging.getLogger("neutronclient.v2_0.client").addFilter(
        lambda record: "python binding code in neutronclient" not in record.getMessage()
    )
    if options and (action, options) != ("teardown", ["--force"]):
        raise ChameleonError(
            f"chameleon: unknown option(s) {' '.join(options)} for '{action}'; accepted: teardown --force"
        )
    if action == "plan":
        print(plan(config))
    elif action == "provision":
        provision(config)
    elif action == "teardown":
        teardown(config, force=bool(options))
    elif action == "extend":
        extend(config)
    elif action == "check":
        check(config)
    else:
        raise ChameleonError(
            f"chameleon: unknown action '{action}'; accepted: plan, provision, teardown, extend, check"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
