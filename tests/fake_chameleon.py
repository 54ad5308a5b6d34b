#!/usr/bin/env python3
"""A small fake of a Chameleon (OpenStack) site for driving python-chi offline.

Stdlib only. Serves, on 127.0.0.1, under one port:

    /v3/...               Keystone v3 (password, application-credential and token auth, token
                          validation, OIDC federation: /v3/OS-FEDERATION/.../protocols/openid/auth)
    /oidc/...             the identity provider of Chameleon's password openrc (v3oidcpassword):
                          discovery document and token endpoint (password grant)
    /reservation/v1/...   Blazar (leases, hosts with their node_type)
    /compute/v2.1/...     Nova (servers, flavors, keypairs)
    /network/v2.0/...     Neutron (networks, ports, floating IPs, security groups)
    /image/v2/...         Glance (images, schemas)

Use in-process::

    fake = FakeChameleon(password="secret", capacity={"gpu_rtx_6000": 1})
    fake.start(); ...; fake.stop()
    fake.url            # http://127.0.0.1:PORT  (OS_AUTH_URL = fake.url + "/v3")

or standalone: ``python fake_chameleon.py --port 8999``.

Knobs (attributes, safe to change while running):
    capacity            dict node_type -> number of hosts (unknown type -> 0)
    busy                dict node_type -> hosts reserved by other projects (listed, not reservable)
    flavor_capacity     dict flavor name -> instances reservable (KVM "flavor:instance" leases)
    fip_capacity        number of reservable floating IPs
    lease_final_status  "ACTIVE" (default), "ERROR", or None (never leaves PENDING)
    server_final_status "ACTIVE" (default), "ERROR", or None (never leaves BUILD)
    gets_to_transition  how many GETs of a lease/server before it moves on (default 1); a lease
                        goes PENDING -> STARTING -> ACTIVE, and a KVM lease's reserved flavor is
                        listed only while the lease is ACTIVE
    fail_deletes        set of: "server" (a deleted server lands in ERROR instead, as when Ironic
                        fails to clean a node), "lease" (Blazar answers 500), "lease-silently"
                        (Blazar answers 204 and keeps the lease)
    refuse_updates      None, or the reason Blazar gives for refusing to move a lease's end
                        (e.g. "Not enough hosts available": the hosts are reserved after it)
    password            the only password Keystone (and the identity provider) accepts
    app_cred_id, app_cred_secret   the application credential Keystone accepts; like Keystone, a
                        request that also asks for a scope is refused (401)
Inspection: leases(), servers(), floating_ips(), ports(), keypairs(), security_groups(),
    flavors_named(prefix), requests (log), requests_matching(method, substring), reset().
Outside the tool (as a user in Horizon, or the site itself): end_lease(id) (its end date passes:
    TERMINATED, its servers, reserved IPs and flavor go), delete_lease(id), delete_server(id),
    set_lease(id, status=, start=, end=).

Several nodes: a host reservation of `min` N takes N servers (each launched on its own, with the
reservation as scheduler hint), and a flavor reservation of `amount` N takes N instances on its
flavor; one more lands in ERROR ("No valid host"), as Nova's scheduler does. Each server gets a port
on sharednet1 with its own fixed address (10.140.x.y), reported in its `addresses` as "fixed".

Lease updates (PUT /leases/<id>) follow Blazar: end_date (what blazarclient sends, having computed
it from --prolong-for) or prolong_for; refused unless the lease is PENDING, ACTIVE or ERROR (Blazar's
lease status machine), and, as Chameleon's MaxLeaseDurationFilter, a later end only within 48 h of
the current end and by at most 7 days.

KVM flavor reservations follow Chameleon's Blazar flavor plugin: the lease gets a private flavor
named "reservation:<reservation id>" (id = the reservation id, the source flavor's extra specs plus
"aggregate_instance_extra_specs:reservation" naming the reservation); the reservation's flavor_id
is that flavor and resource_properties holds the source flavor; a server launched on it counts
against the amount; deleting the lease deletes the flavor and its servers.
"""

import argparse
import base64
import copy
import datetime as dt
import json
import random
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_IMAGES = ["CC-Ubuntu24.04", "CC-Ubuntu24.04-CUDA", "CC-Ubuntu24.04-ROCm", "CC-Ubuntu22.04"]
DEFAULT_CAPACITY = {
    "gpu_rtx_6000": 1,
    "gpu_a100_pcie": 1,
    "gpu_mi100": 1,
    "compute_skylake": 4,
    "compute_cascadelake_r": 4,
}
DEFAULT_FLAVOR_CAPACITY = {"m1.large": 4, "m1.xlarge": 2, "g1.h100.pci.1": 1}
KVM_FLAVORS = (("m1.large", 8192, 4, 40), ("m1.xlarge", 16384, 8, 40), ("g1.h100.pci.1", 131072, 16, 200))
RESERVATION_SPEC = "aggregate_instance_extra_specs:reservation"
LEASE_DATE = "%Y-%m-%dT%H:%M:%S.%f"  # python-chi strptime()s start_date/end_date with this
CREATED_DATE = "%Y-%m-%d %H:%M:%S"  # ... and created_at with this
BLAZAR_IN = "%Y-%m-%d %H:%M"  # what blazarclient sends


def _now():
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _uuid():
    return str(uuid.uuid4())


def _basic_auth_user(header):
    if not header or not header.startswith("Basic "):
        return None
    return base64.b64decode(header[len("Basic ") :]).decode().partition(":")[0]


class HTTPError(Exception):
    def __init__(self, code, body):
        super().__init__(code)
        self.code, self.body = code, body


def _nova_err(code, msg):
    key = {400: "badRequest", 404: "itemNotFound", 409: "conflictingRequest"}.get(code, "computeFault")
    return HTTPError(code, {key: {"code": code, "message": msg}})


def _neutron_err(code, kind, msg):
    return HTTPError(code, {"NeutronError": {"type": kind, "message": msg, "detail": ""}})


def _blazar_err(code, msg):
    # Shape of blazar.api.utils.render_error_message; blazarclient reads "error_message".
    return HTTPError(code, {"error_code": code, "error_message": msg, "error_name": code})


class FakeChameleon:
    def __init__(
        self,
        port=0,
        username="testuser",
        password="secret",
        project_id=None,
        project_name="CHI-000000",
        region="CHI@UC",
        capacity=None,
        fip_capacity=8,
        flavor_capacity=None,
        images=None,
    ):
        self.host, self.port = "127.0.0.1", port
        self.username, self.password = username, password
        self.user_id = uuid.uuid4().hex
        self.project_id = project_id or uuid.uuid4().hex
        self.project_name = project_name
        self.region = region
        self.default_capacity = dict(capacity if capacity is not None else DEFAULT_CAPACITY)
        self.default_fip_capacity = fip_capacity
        self.default_flavor_capacity = dict(
            flavor_capacity if flavor_capacity is not None else DEFAULT_FLAVOR_CAPACITY
        )
        self.image_names = list(images or DEFAULT_IMAGES)
        self.app_cred_id, self.app_cred_secret = uuid.uuid4().hex, "app-cred-" + uuid.uuid4().hex[:12]
        # The site's object store: when set (the URL of an S3 server on loopback), the catalog lists
        # it as Swift's endpoint on the same host and port (Ceph's gateway serves both APIs there),
        # and Keystone's OS-EC2 API hands out ec2_credential (access, secret) when one is created.
        self.object_store = None
        self.ec2_credential = ("fake-ec2-access", "fake-ec2-secret")
        self.ec2_made = []
        self.identity_provider, self.protocol, self.client_id = "chameleon", "openid", "keystone-fake-prod"
        self.lock = threading.RLock()
        self._httpd = None
        self._thread = None
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def start(self):
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def auth_url(self):
        return self.url + "/v3"

    def os_env(self, password=None, auth="password"):
        """OS_* variables that point python-chi at this fake: auth is "password" (v3password),
        "appcred" (an application credential, no project: as Chameleon's openrc for one) or "oidc"
        (Chameleon's password openrc, without OS_PASSWORD unless given)."""
        base = {
            "OS_AUTH_URL": self.auth_url,
            "OS_IDENTITY_API_VERSION": "3",
            "OS_INTERFACE": "public",
            "OS_REGION_NAME": self.region,
        }
        if auth == "appcred":
            return {**base, "OS_AUTH_TYPE": "v3applicationcredential",
                    "OS_APPLICATION_CREDENTIAL_ID": self.app_cred_id,
                    "OS_APPLICATION_CREDENTIAL_SECRET": self.app_cred_secret}
        if auth == "oidc":
            oidc = {**base, "OS_AUTH_TYPE": "v3oidcpassword", "OS_PROJECT_ID": self.project_id,
                    "OS_USERNAME": self.username, "OS_PROTOCOL": self.protocol,
                    "OS_IDENTITY_PROVIDER": self.identity_provider,
                    "OS_DISCOVERY_ENDPOINT": self.url + "/oidc/.well-known/openid-configuration",
                    "OS_CLIENT_ID": self.client_id, "OS_ACCESS_TOKEN_TYPE": "access_token",
                    "OS_CLIENT_SECRET": "none"}
            return {**oidc, "OS_PASSWORD": password} if password else oidc
        return {
            "OS_AUTH_URL": self.auth_url,
            "OS_AUTH_TYPE": "v3password",
            "OS_IDENTITY_API_VERSION": "3",
            "OS_INTERFACE": "public",
            "OS_REGION_NAME": self.region,
            "OS_USERNAME": self.username,
            "OS_PASSWORD": self.password if password is None else password,
            "OS_PROJECT_ID": self.project_id,
            "OS_PROJECT_NAME": self.project_name,
            "OS_USER_DOMAIN_NAME": "Default",
            "OS_PROJECT_DOMAIN_NAME": "Default",
        }

    def reset(self):
        """Forget every resource and request; restore default knobs."""
        with self.lock:
            self.capacity = dict(self.default_capacity)
            self.busy = {}
            self.fip_capacity = self.default_fip_capacity
            self.flavor_capacity = dict(self.default_flavor_capacity)
            self.lease_final_status = "ACTIVE"
            self.server_final_status = "ACTIVE"
            self.ec2_made = []
            self.gets_to_transition = 1
            self.fail_deletes = set()
            self.refuse_updates = None
            self.tokens = {}
            self.access_tokens = set()  # the identity provider's, for the federation endpoint
            self._leases, self._servers, self._fips, self._ports = {}, {}, {}, {}
            self._keypairs, self._secgroups = {}, {}
            self.requests = []
            self.public_net = {
                "id": _uuid(),
                "name": "public",
                "router:external": True,
                "status": "ACTIVE",
                "shared": False,
                "subnets": [_uuid()],
            }
            self.sharednet = {
                "id": _uuid(),
                "name": "sharednet1",
                "router:external": False,
                "status": "ACTIVE",
                "shared": True,
                "subnets": [_uuid()],
            }
            for n in (self.public_net, self.sharednet):
                n.update(
                    {
                        "tenant_id": "admin",
                        "project_id": "admin",
                        "admin_state_up": True,
                        "tags": [],
                        "description": "",
                        "mtu": 1500,
                    }
                )
            self.flavors = {}
            for name, ram, vcpus, disk in (("baremetal", 1024 * 192, 48, 20), ("m1.small", 2048, 1, 20),
                                           *KVM_FLAVORS):
                self._add_flavor(_uuid(), name, ram, vcpus, disk)
            self.images = {}
            for name in self.image_names:
                iid = _uuid()
                self.images[iid] = {
                    "id": iid,
                    "name": name,
                    "status": "active",
                    "visibility": "public",
                    "created_at": "2025-01-01T00:00:00Z",
                    "updated_at": "2025-01-01T00:00:00Z",
                    "build-repo": "https://github.com/ChameleonCloud/cc-images",
                    "container_format": "bare",
                    "disk_format": "qcow2",
                    "size": 1 << 30,
                    "tags": [],
                    "protected": False,
                    "owner": "admin",
                    "self": f"/v2/images/{iid}",
                    "file": f"/v2/images/{iid}/file",
                    "schema": "/v2/schemas/image",
                }
            self._ip_counter = 10

    # ------------------------------------------------------------------ inspection
    def _snapshot(self, table):
        with self.lock:
            return copy.deepcopy(list(table.values()))

    def leases(self):
        return self._snapshot(self._leases)

    def servers(self):
        return self._snapshot(self._servers)

    def floating_ips(self):
        return self._snapshot(self._fips)

    def ports(self):
        return self._snapshot(self._ports)

    def keypairs(self):
        return self._snapshot(self._keypairs)

    def security_groups(self):
        return self._snapshot(self._secgroups)

    def requests_matching(self, method=None, contains=""):
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r["method"] == method) and contains in r["path"]
            ]

    def flavors_named(self, prefix):
        with self.lock:
            return [copy.deepcopy(f) for f in self.flavors.values() if f["name"].startswith(prefix)]

    def add_keypair(self, name, public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFake fake"):
        with self.lock:
            self._keypairs[name] = {
                "name": name,
                "public_key": public_key,
                "type": "ssh",
                "fingerprint": "00:11:22:33",
                "user_id": self.user_id,
            }

    def end_lease(self, lease_id):
        """The lease's end date passes now: Blazar ends it and takes back what it reserved."""
        with self.lock:
            lease = self._leases[lease_id]
            lease["_end"] = _now()
            lease["end_date"] = lease["_end"].strftime(LEASE_DATE)
            self._set_lease_status(lease, "TERMINATED")
            self._release(lease)

    def delete_lease(self, lease_id):
        """Deleted outside the tool (Horizon, the CLI): gone, with its servers, IPs and flavor."""
        with self.lock:
            self._delete_lease(self._leases[lease_id])

    def delete_server(self, server_id):
        """Deleted outside the tool."""
        with self.lock:
            self._delete_server(server_id)

    def set_lease(self, lease_id, status=None, start=None, end=None):
        """Move a lease's status or dates (naive UTC datetimes), as time or an operator would."""
        with self.lock:
            lease = self._leases[lease_id]
            if start is not None:
                lease["_start"], lease["start_date"] = start, start.strftime(LEASE_DATE)
            if end is not None:
                lease["_end"], lease["end_date"] = end, end.strftime(LEASE_DATE)
            if status is not None:
                lease["status"], lease["_gets"] = status, 0

    def is_empty(self):
        with self.lock:
            return not (
                self._leases
                or self._servers
                or self._fips
                or self._ports
                or self._secgroups
                or self.flavors_named("reservation:")
            )

    # ------------------------------------------------------------------ helpers
    def _add_flavor(self, fid, name, ram, vcpus, disk, public=True, extra_specs=None):
        self.flavors[fid] = {
            "id": fid,
            "name": name,
            "ram": ram,
            "vcpus": vcpus,
            "disk": disk,
            "OS-FLV-EXT-DATA:ephemeral": 0,
            "OS-FLV-DISABLED:disabled": False,
            "swap": 0,
            "rxtx_factor": 1.0,
            "os-flavor-access:is_public": public,
            "description": None,
            "extra_specs": dict(extra_specs or {}),
            "links": [],
        }
        return self.flavors[fid]

    def _next_ip(self, prefix):
        self._ip_counter += 1
        n = self._ip_counter
        return f"{prefix}.{n // 250}.{n % 250 + 2}"

    def _catalog(self):
        def svc(stype, name, path):
            return {
                "id": uuid.uuid4().hex,
                "type": stype,
                "name": name,
                "endpoints": [
                    {
                        "id": uuid.uuid4().hex,
                        "interface": iface,
                        "region": self.region,
                        "region_id": self.region,
                        "url": self.url + path,
                    }
                    for iface in ("public", "internal", "admin")
                ],
            }

        stores = []
        if self.object_store:
            stores = [svc("object-store", "swift", "")]
            for endpoint in stores[0]["endpoints"]:
                endpoint["url"] = f"{self.object_store}/swift/v1/AUTH_{self.project_id}"
        return [
            *stores,
            svc("identity", "keystone", "/v3"),
            svc("reservation", "blazar", "/reservation/v1"),
            svc("compute", "nova", "/compute/v2.1"),
            svc("network", "neutron", "/network"),
            svc("image", "glance", "/image"),
        ]

    # ------------------------------------------------------------------ dispatch
    def handle(self, method, path, query, headers, body):
        if path == "/" or path == "":
            return 300, {"versions": {"values": [self._keystone_version()]}}
        if path.startswith("/v3"):
            return self._keystone(method, path[3:], headers, body)
        if path.startswith("/oidc/"):
            return self._oidc(method, path[len("/oidc") :], headers, body)
        token = headers.get("X-Auth-Token")
        # Version documents are unauthenticated, like the real services.
        for prefix, fn in (
            ("/reservation", self._blazar),
            ("/compute", self._nova),
            ("/network", self._neutron),
            ("/image", self._glance),
        ):
            if path == prefix or path.startswith(prefix + "/"):
                sub = path[len(prefix) :]
                doc = self._version_doc(prefix, sub)
                if doc is not None:
                    return doc
                if token not in self.tokens:
                    raise HTTPError(
                        401,
                        {
                            "error": {
                                "code": 401,
                                "title": "Unauthorized",
                                "message": "The request you have made requires authentication.",
                            }
                        },
                    )
                return fn(method, sub, query, body)
        raise HTTPError(404, {"error": {"code": 404, "message": f"no route for {path}"}})

    def _version_doc(self, prefix, sub):
        sub = sub.rstrip("/")
        u = self.url + prefix
        if prefix == "/compute" and sub in ("", "/v2.1"):
            v = {
                "id": "v2.1",
                "status": "CURRENT",
                "version": "2.96",
                "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": u + "/v2.1/"}],
            }
            return (200, {"version": v}) if sub else (200, {"versions": [v]})
        if prefix == "/reservation" and sub in ("", "/v1"):
            v = {"id": "v1.0", "status": "CURRENT", "links": [{"rel": "self", "href": u + "/v1/"}]}
            return (200, {"version": v}) if sub else (300, {"versions": [v]})
        if prefix == "/network" and sub in ("", "/v2.0"):
            v = {"id": "v2.0", "status": "CURRENT", "links": [{"rel": "self", "href": u + "/v2.0/"}]}
            if sub:
                return 200, {"resources": [{"name": "network", "collection": "networks", "links": []}]}
            return 200, {"versions": [v]}
        if prefix == "/image" and sub in ("", "/versions", "/v2"):
            v = {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": u + "/v2/"}]}
            return 300 if not sub else 200, {"versions": [v]}
        return None

    # ------------------------------------------------------------------ keystone
    def _keystone_version(self):
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self.auth_url + "/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    def _token_body(self, methods=("password",), scoped=True):
        now = _now()
        body = {
            "token": {
                "methods": list(methods),
                "expires_at": _iso(now + dt.timedelta(hours=8)).replace("Z", ".000000Z"),
                "issued_at": _iso(now).replace("Z", ".000000Z"),
                "audit_ids": [uuid.uuid4().hex[:22]],
                "user": {
                    "id": self.user_id,
                    "name": self.username,
                    "password_expires_at": None,
                    "domain": {"id": "default", "name": "Default"},
                },
                "project": {
                    "id": self.project_id,
                    "name": self.project_name,
                    "domain": {"id": "default", "name": "Default"},
                },
                "roles": [{"id": uuid.uuid4().hex, "name": "member"}],
                "is_domain": False,
                "catalog": self._catalog(),
            }
        }
        if not scoped:  # an unscoped token, as federation hands out: no project, no catalog
            for key in ("project", "roles", "is_domain", "catalog"):
                del body["token"][key]
        return body

    # ------------------------------------------------------------------ identity provider (OIDC)
    def _oidc(self, method, sub, headers, body):
        """Keycloak's part of Chameleon's password openrc: discovery, then the password grant."""
        if sub == "/.well-known/openid-configuration" and method == "GET":
            return 200, {
                "issuer": self.url + "/oidc",
                "token_endpoint": self.url + "/oidc/token",
                "grant_types_supported": ["authorization_code", "password", "refresh_token"],
            }
        if sub == "/token" and method == "POST":
            form = body or {}
            client = _basic_auth_user(headers.get("Authorization")) or form.get("client_id")
            if form.get("grant_type") != "password" or client != self.client_id:
                raise HTTPError(400, {"error": "unauthorized_client"})
            if form.get("username") != self.username or form.get("password") != self.password:
                raise HTTPError(401, {"error": "invalid_grant", "error_description": "Invalid credentials"})
            token = "oidc-" + uuid.uuid4().hex
            self.access_tokens.add(token)
            return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 300}
        raise HTTPError(404, {"error": "not found"})

    def _keystone(self, method, sub, headers, body):
        sub = sub.rstrip("/")
        unauth = HTTPError(
            401,
            {
                "error": {
                    "code": 401,
                    "title": "Unauthorized",
                    "message": "The request you have made requires authentication.",
                }
            },
        )
        if sub == "" and method == "GET":
            return 200, {"version": self._keystone_version()}
        if sub == "/auth/tokens" and method == "POST":
            ident = (body or {}).get("auth", {}).get("identity", {})
            if "password" in ident.get("methods", []):
                user = ident.get("password", {}).get("user", {})
                ok = (
                    user.get("name") in (self.username, None) or user.get("id") == self.user_id
                ) and user.get("password") == self.password
            elif "token" in ident.get("methods", []):
                ok = ident.get("token", {}).get("id") in self.tokens
            elif "application_credential" in ident.get("methods", []):
                cred = ident.get("application_credential", {})
                ok = cred.get("id") == self.app_cred_id and cred.get("secret") == self.app_cred_secret
                if ok and (body or {}).get("auth", {}).get("scope"):
                    # Keystone: the credential is bound to its project; any scope is refused.
                    refused = "Application credentials cannot request a scope."
                    raise HTTPError(401, {"error": {"code": 401, "title": "Unauthorized",
                                                    "message": refused}})
            else:
                ok = False
            if not ok:
                raise unauth
            methods = [m for m in ident.get("methods", []) if m != "token"] or ["mapped"]
            scope = (body or {}).get("auth", {}).get("scope", {}).get("project")
            if (
                scope
                and scope.get("id") not in (None, self.project_id)
                and scope.get("name") not in (None, self.project_name)
            ):
                raise unauth
            tok = uuid.uuid4().hex
            self.tokens[tok] = True
            return 201, self._token_body(methods), {"X-Subject-Token": tok}
        idp, proto = self.identity_provider, self.protocol
        if sub == f"/OS-FEDERATION/identity_providers/{idp}/protocols/{proto}/auth":
            # Behind Keystone's OIDC module: the bearer token is checked with the identity provider.
            bearer = (headers.get("Authorization") or "").removeprefix("Bearer ")
            if bearer not in self.access_tokens:
                raise unauth
            tok = uuid.uuid4().hex
            self.tokens[tok] = True
            return 201, self._token_body(["mapped"], scoped=False), {"X-Subject-Token": tok}
        if headers.get("X-Auth-Token") not in self.tokens:
            raise unauth
        if sub == "/auth/tokens" and method == "GET":
            if headers.get("X-Subject-Token") not in self.tokens:
                raise HTTPError(404, {"error": {"code": 404, "message": "token not found"}})
            return 200, self._token_body(), {"X-Subject-Token": headers.get("X-Subject-Token")}
        project = {
            "id": self.project_id,
            "name": self.project_name,
            "domain_id": "default",
            "enabled": True,
            "description": "",
            "is_domain": False,
            "parent_id": "default",
            "links": {"self": f"{self.auth_url}/projects/{self.project_id}"},
        }
        if sub == f"/users/{self.user_id}/credentials/OS-EC2":
            if method == "POST":  # as Keystone: for this user and the project named in the body
                made = {"access": self.ec2_credential[0], "secret": self.ec2_credential[1],
                        "user_id": self.user_id, "tenant_id": (body or {}).get("tenant_id"),
                        "trust_id": None, "links": {"self": None}}
                self.ec2_made.append(made)
                return 201, {"credential": made}
            return 200, {"credentials": list(self.ec2_made), "links": {"self": None, "next": None,
                                                                      "previous": None}}
        if sub == f"/projects/{self.project_id}":
            return 200, {"project": project}
        if sub in ("/projects", f"/users/{self.user_id}/projects", "/auth/projects"):
            return 200, {"projects": [project], "links": {"self": None, "next": None, "previous": None}}
        raise HTTPError(404, {"error": {"code": 404, "message": f"not found: {sub}"}})

    # ------------------------------------------------------------------ blazar
    def _lease_view(self, lease, observe):
        # As Blazar: PENDING -> STARTING (the start event is running) -> ACTIVE, each held for
        # gets_to_transition GETs; a lease that fails goes from PENDING to ERROR.
        if observe and lease["status"] == "ACTIVE" and lease["_end"] <= _now():
            self._set_lease_status(lease, "TERMINATED")  # its end_date passed: the hosts are taken back
            self._release(lease)
        if observe and lease["status"] in ("PENDING", "STARTING"):
            lease["_gets"] += 1
            if lease["_gets"] < self.gets_to_transition:
                pass
            elif lease["status"] == "STARTING":
                self._set_lease_status(lease, "ACTIVE")
            elif self.lease_final_status and lease["_start"] <= _now() + dt.timedelta(minutes=5):
                lease["_gets"] = 0
                self._set_lease_status(
                    lease, "STARTING" if self.lease_final_status == "ACTIVE" else self.lease_final_status
                )
        return {k: copy.deepcopy(v) for k, v in lease.items() if not k.startswith("_")}

    def _set_lease_status(self, lease, status):
        lease["status"] = status
        lease["updated_at"] = _now().strftime(CREATED_DATE)
        for r in lease["reservations"]:
            r["status"] = {"ACTIVE": "active", "ERROR": "error"}.get(status, r["status"])
            if status == "ACTIVE" and r["resource_type"] == "virtual:floatingip":
                # Blazar allocates the reserved IPs into the project, tagged with the reservation.
                for _ in range(int(r["amount"])):
                    fid = _uuid()
                    self._fips[fid] = self._new_fip(
                        fid, tags=["blazar", f"reservation:{r['id']}"], description=f"reservation:{r['id']}"
                    )

    def _parse_date(self, value, field):
        if value in (None, "", "now"):
            return _now()
        for fmt in (BLAZAR_IN, "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S"):
            try:
                return dt.datetime.strptime(value, fmt)
            except (TypeError, ValueError):
                pass
        raise _blazar_err(400, f"Malformed parameter {field}")

    def _node_type(self, props):
        try:
            parsed = json.loads(props) if isinstance(props, str) and props else props
        except ValueError:
            raise _blazar_err(400, f"Malformed requirements {props}")
        found = []

        def walk(x):
            if isinstance(x, list):
                if len(x) == 3 and x[0] == "==" and x[1] == "$node_type":
                    found.append(x[2])
                for y in x:
                    walk(y)

        walk(parsed)
        return found[0] if found else None

    def _used(self, predicate):
        n = 0
        for lease in self._leases.values():
            if lease["status"] in ("PENDING", "ACTIVE", "STARTING"):
                for r in lease["reservations"]:
                    if predicate(r):
                        n += int(r.get("amount") or r.get("min") or 0)
        return n

    def _blazar(self, method, sub, query, body):
        parts = [p for p in sub.split("/") if p]  # ["v1", "leases", id?]
        if parts == ["v1", "os-hosts"] and method == "GET":
            # Chameleon's hosts carry their extra capabilities, node_type among them.
            hosts = [
                {"id": str(1000 + i), "hypervisor_hostname": f"{ntype}-{n:03d}", "node_type": ntype,
                 "reservable": True, "vcpus": 48, "memory_mb": 196608, "local_gb": 200}
                for i, (ntype, n) in enumerate(
                    (ntype, n) for ntype, count in sorted(self.capacity.items()) for n in range(count)
                )
            ]
            return 200, {"hosts": hosts}
        if len(parts) < 2 or parts[0] != "v1" or parts[1] != "leases":
            raise _blazar_err(404, f"Resource not found: {sub}")
        lid = parts[2] if len(parts) > 2 else None
        if lid is None and method == "GET":
            return 200, {"leases": [self._lease_view(l, True) for l in self._leases.values()]}
        if lid is None and method == "POST":
            return self._create_lease(body or {})
        lease = self._leases.get(lid)
        if lease is None:
            raise _blazar_err(404, f"Object with {{'lease_id': '{lid}'}} not found")
        if method == "GET":
            return 200, {"lease": self._lease_view(lease, True)}
        if method == "DELETE":
            if "lease" in self.fail_deletes:
                raise _blazar_err(500, f"Failed to delete lease {lid}: the fake's knob says so")
            if "lease-silently" not in self.fail_deletes:
                self._delete_lease(lease)
            return 204, None
        if method == "PUT":
            return self._update_lease(lease, body or {})
        raise _blazar_err(405, "Method not allowed")

    def _create_lease(self, body):
        name = body.get("name")
        if not name:
            raise _blazar_err(400, "Missing parameter name")
        if any(l["name"] == name for l in self._leases.values()):
            raise _blazar_err(409, f"The lease with name: {name} already exists")
        start = self._parse_date(body.get("start_date"), "start_date")
        end = self._parse_date(body.get("end_date"), "end_date")
        if end <= start:
            raise _blazar_err(400, "End date must be later than start date.")
        lease_id = _uuid()
        now = _now()
        reservations = []
        for req in body.get("reservations") or []:
            rtype = req.get("resource_type")
            r = {
                "id": _uuid(),
                "lease_id": lease_id,
                "resource_id": _uuid(),
                "resource_type": rtype,
                "status": "pending",
                "missing_resources": False,
                "resources_changed": False,
                "created_at": now.strftime(CREATED_DATE),
                "updated_at": None,
            }
            if rtype == "physical:host":
                amount = int(req.get("min", 1))
                if int(req.get("max", amount)) < amount or amount < 1:
                    raise _blazar_err(400, "Invalid values for min/max of hosts.")
                ntype = self._node_type(req.get("resource_properties"))
                cap = self.capacity.get(ntype, 0) if ntype else sum(self.capacity.values())
                cap -= self.busy.get(ntype, 0) if ntype else sum(self.busy.values())
                used = self._used(
                    lambda x: (
                        x["resource_type"] == "physical:host"
                        and self._node_type(x.get("resource_properties")) == ntype
                    )
                )
                if used + amount > cap:
                    raise _blazar_err(500, "Not enough hosts available")
                r.update(
                    {
                        "min": amount,
                        "max": int(req.get("max", amount)),
                        "resource_properties": req.get("resource_properties", ""),
                        "hypervisor_properties": req.get("hypervisor_properties", ""),
                        "before_end": "default",
                        "on_start": "default",
                    }
                )
            elif rtype == "virtual:floatingip":
                amount = int(req.get("amount", 1))
                if req.get("network_id") != self.public_net["id"]:
                    raise _blazar_err(400, f"Floating IP network {req.get('network_id')} not found")
                if (
                    self._used(lambda x: x["resource_type"] == "virtual:floatingip") + amount
                    > self.fip_capacity
                ):
                    raise _blazar_err(500, "Not enough floating IPs available")
                r.update({"amount": amount, "network_id": req["network_id"], "required_floatingips": []})
            elif rtype == "flavor:instance":
                amount = int(req.get("amount", 1))
                base = self.flavors.get(req.get("flavor_id"))
                if not base or RESERVATION_SPEC in base["extra_specs"]:
                    raise _blazar_err(400, f"Flavor {req.get('flavor_id')} is not reservable")
                used = self._used(
                    lambda x: x["resource_type"] == "flavor:instance"
                    and json.loads(x["resource_properties"])["id"] == base["id"]
                )
                if used + amount > self.flavor_capacity.get(base["name"], 0):
                    raise _blazar_err(500, "Not enough hosts available")
                if req.get("affinity") is not None:
                    raise _blazar_err(400, "affinity (not supported for flavor reservations)")
                # As Chameleon's flavor plugin: the source flavor is kept in resource_properties,
                # and flavor_id becomes the private flavor made for the reservation.
                source = {k: v for k, v in base.items() if k != "links"}
                r.update({"amount": amount, "flavor_id": r["id"], "affinity": None,
                          "resource_properties": json.dumps(source)})
                self._add_flavor(
                    r["id"],
                    f"reservation:{r['id']}",
                    base["ram"],
                    base["vcpus"],
                    base["disk"],
                    public=False,
                    extra_specs={
                        **base["extra_specs"],
                        RESERVATION_SPEC: r["id"],
                        "resources:CUSTOM_RESERVATION_" + r["id"].upper().replace("-", "_"): "1",
                    },
                )
                self.flavors[r["id"]]["description"] = f"{name} (ID: {lease_id})"
            else:
                raise _blazar_err(400, f"Unsupported resource type {rtype} in this fake")
            reservations.append(r)
        lease = {
            "id": lease_id,
            "name": name,
            "status": "PENDING",
            "degraded": False,
            "start_date": start.strftime(LEASE_DATE),
            "end_date": end.strftime(LEASE_DATE),
            "created_at": now.strftime(CREATED_DATE),
            "updated_at": None,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "trust_id": uuid.uuid4().hex,
            "reservations": reservations,
            "events": [],
            "_gets": 0,
            "_start": start,
            "_end": end,
        }
        self._leases[lease_id] = lease
        return 201, {"lease": self._lease_view(lease, False)}

    def _update_lease(self, lease, body):
        if lease["status"] not in ("PENDING", "ACTIVE", "ERROR"):  # no UPDATING from these
            raise _blazar_err(409, f"Invalid lease status: lease {lease['id']} is {lease['status']}.")
        end = lease["_end"]
        if body.get("end_date"):
            end = self._parse_date(body["end_date"], "end_date")
        elif body.get("prolong_for"):
            match = re.fullmatch(r"(\d+)([smhd])", str(body["prolong_for"]))
            if not match:
                raise _blazar_err(400, "Invalid time format for option.")
            unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
            end = end + dt.timedelta(**{unit: int(match.group(1))})
        if end != lease["_end"]:
            if end <= _now():
                raise _blazar_err(400, "End date must be later than current date.")
            window, longest = dt.timedelta(hours=48), dt.timedelta(days=7)
            if end > lease["_end"] and _now() < lease["_end"] - window:
                raise _blazar_err(400, "Lease can only be extended within 172800 seconds of the "
                                       "leases current end time.")
            if end - lease["_end"] > longest:
                raise _blazar_err(400, f"Lease duration of {int((end - lease['_end']).total_seconds())} "
                                       "seconds must be less than or equal to the maximum lease "
                                       "duration of 604800 seconds.")
            if end > lease["_end"] and self.refuse_updates:
                raise _blazar_err(409, self.refuse_updates)
            lease["_end"], lease["end_date"] = end, end.strftime(LEASE_DATE)
        if "name" in body:
            lease["name"] = body["name"]
        lease["updated_at"] = _now().strftime(CREATED_DATE)
        return 200, {"lease": self._lease_view(lease, False)}

    def _delete_lease(self, lease):
        self._release(lease)
        del self._leases[lease["id"]]

    def _release(self, lease):
        # Like Blazar at lease end: servers on its hosts and its reserved IPs go away.
        res_ids = {r["id"] for r in lease["reservations"]}
        for sid, s in list(self._servers.items()):
            if s["_reservation"] in res_ids:
                self._delete_server(sid)
        for fid, f in list(self._fips.items()):
            if any(t == f"reservation:{rid}" for t in f["tags"] for rid in res_ids):
                del self._fips[fid]
        for rid in res_ids:
            self.flavors.pop(rid, None)  # the reserved flavor, for flavor:instance reservations

    def _flavor_visible(self, flavor):
        """A lease's reserved flavor is offered to the project only while the lease is ACTIVE."""
        rid = flavor["extra_specs"].get(RESERVATION_SPEC)
        if not rid:
            return True
        lease, _ = self._reservation(rid, "flavor:instance")
        return bool(lease) and lease["status"] == "ACTIVE"

    def _reservation(self, rid, rtype):
        for lease in self._leases.values():
            for r in lease["reservations"]:
                if r["id"] == rid and r["resource_type"] == rtype:
                    return lease, r
        return None, None

    # ------------------------------------------------------------------ nova
    def _server_view(self, s, observe):
        if observe and s["status"] == "BUILD":
            s["_gets"] += 1
            if s["_gets"] >= self.gets_to_transition and self.server_final_status:
                s["status"] = self.server_final_status
                s["OS-EXT-STS:vm_state"] = self.server_final_status.lower()
                if s["status"] == "ERROR":
                    s["fault"] = {
                        "code": 500,
                        "message": "No valid host was found. ",
                        "created": _iso(_now()),
                    }
        out = {k: copy.deepcopy(v) for k, v in s.items() if not k.startswith("_")}
        addrs = {}
        for p in self._ports.values():
            if p["device_id"] != s["id"]:
                continue
            entries = addrs.setdefault(self.sharednet["name"], [])
            for ip in p["fixed_ips"]:
                entries.append(
                    {
                        "addr": ip["ip_address"],
                        "version": 4,
                        "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": p["mac_address"],
                    }
                )
            for f in self._fips.values():
                if f["port_id"] == p["id"]:
                    entries.append(
                        {
                            "addr": f["floating_ip_address"],
                            "version": 4,
                            "OS-EXT-IPS:type": "floating",
                            "OS-EXT-IPS-MAC:mac_addr": p["mac_address"],
                        }
                    )
        out["addresses"] = addrs
        return out

    def _nova(self, method, sub, query, body):
        parts = [p for p in sub.split("/") if p][1:]  # drop "v2.1"
        if not parts:
            raise _nova_err(404, "Not found")
        head = parts[0]
        if head == "flavors":
            if len(parts) == 1 or parts[1] == "detail":
                return 200, {"flavors": [f for f in self.flavors.values() if self._flavor_visible(f)]}
            f = self.flavors.get(parts[1])
            if not f or not self._flavor_visible(f):
                raise _nova_err(404, f"Flavor {parts[1]} could not be found.")
            if len(parts) > 2 and parts[2] == "os-extra_specs":
                return 200, {"extra_specs": f["extra_specs"]}
            return 200, {"flavor": f}
        if head == "os-keypairs":
            if len(parts) == 1 and method == "GET":
                return 200, {"keypairs": [{"keypair": k} for k in self._keypairs.values()]}
            if len(parts) == 1 and method == "POST":
                kp = (body or {}).get("keypair", {})
                if kp.get("name") in self._keypairs:
                    raise _nova_err(409, f"Key pair '{kp.get('name')}' already exists.")
                self.add_keypair(kp["name"], kp.get("public_key") or "ssh-rsa AAAA generated")
                return 200, {"keypair": self._keypairs[kp["name"]]}
            k = self._keypairs.get(parts[1])
            if not k:
                raise _nova_err(404, f"Keypair {parts[1]} not found for user {self.user_id}")
            if method == "DELETE":
                del self._keypairs[parts[1]]
                return 202, None
            return 200, {"keypair": k}
        if head == "servers":
            if len(parts) == 1 and method == "POST":
                return self._create_server(body or {})
            if len(parts) == 1 or parts[1] == "detail":
                items = list(self._servers.values())
                if "name" in query:
                    rx = re.compile(query["name"][0])
                    items = [s for s in items if rx.search(s["name"])]
                views = [self._server_view(s, False) for s in items]
                if len(parts) == 1:
                    views = [{"id": v["id"], "name": v["name"], "links": v["links"]} for v in views]
                return 200, {"servers": views}
            s = self._servers.get(parts[1])
            if not s:
                raise _nova_err(404, f"Instance {parts[1]} could not be found.")
            if len(parts) == 2 and method == "GET":
                return 200, {"server": self._server_view(s, True)}
            if len(parts) == 2 and method == "DELETE":
                if "server" in self.fail_deletes:  # the delete fails on the site's side
                    s.update(status="ERROR", fault={"code": 500, "created": _iso(_now()),
                                                    "message": "Failed to clean the node"})
                    return 204, None
                self._delete_server(s["id"])
                return 204, None
            if len(parts) >= 3 and parts[2] == "metadata":
                if method in ("PUT", "POST"):
                    s["metadata"].update((body or {}).get("metadata") or (body or {}).get("meta") or {})
                return 200, {"metadata": s["metadata"]}
            if len(parts) == 3 and parts[2] == "os-interface":
                return 200, {
                    "interfaceAttachments": [
                        {
                            "port_id": p["id"],
                            "net_id": p["network_id"],
                            "mac_addr": p["mac_address"],
                            "port_state": p["status"],
                            "fixed_ips": p["fixed_ips"],
                        }
                        for p in self._ports.values()
                        if p["device_id"] == s["id"]
                    ]
                }
            if len(parts) == 3 and parts[2] == "action":
                return self._server_action(s, body or {})
        raise _nova_err(404, f"Not found: {sub}")

    def _create_server(self, body):
        req = body.get("server") or {}
        hints = body.get("os:scheduler_hints") or body.get("OS-SCH-HNT:scheduler_hints") or {}
        name = req.get("name")
        if not name:
            raise _nova_err(400, "Invalid input for field/attribute server. 'name' is a required property")
        flavor_ref = req.get("flavorRef")
        flavor = self.flavors.get(flavor_ref) or next(
            (f for f in self.flavors.values() if f["name"] == flavor_ref), None
        )
        if not flavor:
            raise _nova_err(400, f"Flavor {flavor_ref} could not be found.")
        if req.get("imageRef") not in self.images:
            raise _nova_err(400, f"Image {req.get('imageRef')} could not be found.")
        if req.get("key_name") and req["key_name"] not in self._keypairs:
            raise _nova_err(400, "Invalid key_name provided.")
        nets = req.get("networks") or [{"uuid": self.sharednet["id"]}]
        if nets == "auto":
            nets = [{"uuid": self.sharednet["id"]}]
        for n in nets:
            if n.get("uuid") not in (self.sharednet["id"], self.public_net["id"]):
                raise _nova_err(400, f"Network {n.get('uuid')} could not be found.")
        rid = hints.get("reservation")
        status, fault = "BUILD", None
        reserved = flavor["extra_specs"].get(RESERVATION_SPEC)
        if flavor["name"] == "baremetal" or reserved:
            if reserved:  # a KVM instance on its lease's flavor; the scheduler hint is not needed
                rid = reserved
                lease, res = self._reservation(rid, "flavor:instance")
            else:
                lease, res = self._reservation(rid, "physical:host") if rid else (None, None)
            in_use = sum(
                1 for s in self._servers.values() if s["_reservation"] == rid and s["status"] != "ERROR"
            )
            limit = int(res.get("min") or res.get("amount") or 0) if res else 0
            if not res or lease["status"] != "ACTIVE" or in_use >= limit:
                # Nova accepts the request; scheduling then fails and the server lands in ERROR.
                status, fault = (
                    "ERROR",
                    {
                        "code": 500,
                        "created": _iso(_now()),
                        "message": "No valid host was found. There are not enough hosts available.",
                    },
                )
        sid = _uuid()
        now = _iso(_now())
        s = {
            "id": sid,
            "name": name,
            "status": status,
            "tenant_id": self.project_id,
            "user_id": self.user_id,
            "metadata": req.get("metadata") or {},
            "hostId": uuid.uuid4().hex,
            "image": {"id": req["imageRef"], "links": []},
            "flavor": {
                "original_name": flavor["name"],
                "vcpus": flavor["vcpus"],
                "ram": flavor["ram"],
                "disk": flavor["disk"],
                "ephemeral": 0,
                "swap": 0,
                "extra_specs": {},
            },
            "created": now,
            "updated": now,
            "addresses": {},
            "accessIPv4": "",
            "accessIPv6": "",
            "links": [{"rel": "self", "href": f"{self.url}/compute/v2.1/servers/{sid}"}],
            "key_name": req.get("key_name"),
            "config_drive": "",
            "progress": 0,
            "OS-EXT-STS:task_state": None,
            "OS-EXT-STS:vm_state": status.lower(),
            "OS-EXT-STS:power_state": 1,
            "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-SRV-ATTR:hypervisor_hostname": None,
            "OS-EXT-SRV-ATTR:host": None,
            "OS-SRV-USG:launched_at": None,
            "OS-SRV-USG:terminated_at": None,
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
            "os-extended-volumes:volumes_attached": [],
            "locked": False,
            "locked_reason": None,
            "description": None,
            "tags": [],
            "trusted_image_certificates": None,
            "host_status": "UP",
            "server_groups": [],
            "_reservation": rid,
            "_gets": 0,
        }
        if fault:
            s["fault"] = fault
        self._servers[sid] = s
        if status != "ERROR":
            for n in nets:
                pid = _uuid()
                self._ports[pid] = {
                    "id": pid,
                    "name": "",
                    "network_id": n["uuid"],
                    "device_id": sid,
                    "device_owner": "compute:nova",
                    "status": "ACTIVE",
                    "admin_state_up": True,
                    "mac_address": "fa:16:3e:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(3)),
                    "fixed_ips": [
                        {"subnet_id": self.sharednet["subnets"][0], "ip_address": self._next_ip("10.140")}
                    ],
                    "tenant_id": self.project_id,
                    "project_id": self.project_id,
                    "tags": [],
                    "security_groups": [],
                    "description": "",
                    "binding:vnic_type": "baremetal",
                }
        return 202, {
            "server": {
                "id": sid,
                "links": s["links"],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": "default"}],
                "adminPass": "x",
            }
        }

    def _server_action(self, s, body):
        if "addSecurityGroup" in body or "removeSecurityGroup" in body:
            adding = "addSecurityGroup" in body
            name = (body.get("addSecurityGroup") or body.get("removeSecurityGroup") or {}).get("name")
            matches = [g for g in self._secgroups.values() if g["name"] == name or g["id"] == name]
            if not matches:
                raise _nova_err(404, f"Security group {name} not found for project {self.project_id}.")
            if len(matches) > 1:
                raise _nova_err(409, f"Multiple security_group matches found for name '{name}', use an ID.")
            entry = {"name": matches[0]["name"]}
            if adding and entry not in s["security_groups"]:
                s["security_groups"].append(entry)
            elif not adding and entry in s["security_groups"]:
                s["security_groups"].remove(entry)
        return 202, None

    def _delete_server(self, sid):
        for pid, p in list(self._ports.items()):
            if p["device_id"] == sid:
                for f in self._fips.values():
                    if f["port_id"] == pid:
                        f.update(port_id=None, fixed_ip_address=None, status="DOWN")
                del self._ports[pid]
        del self._servers[sid]

    # ------------------------------------------------------------------ neutron
    def _new_fip(self, fid, tags=(), description=""):
        return {
            "id": fid,
            "floating_ip_address": self._next_ip("129.114"),
            "floating_network_id": self.public_net["id"],
            "port_id": None,
            "fixed_ip_address": None,
            "router_id": None,
            "status": "DOWN",
            "tenant_id": self.project_id,
            "project_id": self.project_id,
            "tags": list(tags),
            "description": description,
            "port_details": None,
            "created_at": _iso(_now()),
            "updated_at": _iso(_now()),
            "revision_number": 0,
            "dns_domain": "",
            "dns_name": "",
            "qos_policy_id": None,
            "port_forwardings": [],
        }

    @staticmethod
    def _filter(items, query, keys):
        for k in keys:
            if k in query:
                items = [i for i in items if str(i.get(k)) in query[k]]
        return items

    def _neutron(self, method, sub, query, body):
        parts = [p for p in sub.split("/") if p][1:]  # drop "v2.0"
        if parts and parts[-1].endswith(".json"):
            parts[-1] = parts[-1][:-5]
        if not parts:
            raise _neutron_err(404, "HTTPNotFound", "not found")
        kind, rid = parts[0], (parts[1] if len(parts) > 1 else None)
        if kind == "networks":
            nets = [self.public_net, self.sharednet]
            if rid:
                n = next((n for n in nets if n["id"] == rid), None)
                if not n:
                    raise _neutron_err(404, "NetworkNotFound", f"Network {rid} could not be found.")
                return 200, {"network": n}
            return 200, {"networks": self._filter(nets, query, ["id", "name", "router:external"])}
        if kind == "subnets":
            subs = [
                {
                    "id": n["subnets"][0],
                    "name": n["name"] + "-subnet",
                    "network_id": n["id"],
                    "cidr": "10.140.0.0/16" if n is self.sharednet else "129.114.0.0/16",
                    "ip_version": 4,
                }
                for n in (self.public_net, self.sharednet)
            ]
            return 200, {"subnets": subs}
        if kind == "ports":
            if rid:
                p = self._ports.get(rid)
                if not p:
                    raise _neutron_err(404, "PortNotFound", f"Port {rid} could not be found.")
                return 200, {"port": p}
            return 200, {
                "ports": self._filter(
                    list(self._ports.values()), query, ["id", "device_id", "network_id", "name"]
                )
            }
        if kind == "floatingips":
            if rid is None and method == "GET":
                return 200, {
                    "floatingips": self._filter(
                        list(self._fips.values()), query, ["id", "floating_ip_address", "port_id"]
                    )
                }
            if rid is None and method == "POST":
                req = (body or {}).get("floatingip", {})
                if req.get("floating_network_id") != self.public_net["id"]:
                    raise _neutron_err(404, "NetworkNotFound", "External network not found.")
                fid = _uuid()
                self._fips[fid] = self._new_fip(fid, description=req.get("description", ""))
                return 201, {"floatingip": self._fips[fid]}
            f = self._fips.get(rid)
            if not f:
                raise _neutron_err(404, "FloatingIPNotFound", f"Floating IP {rid} could not be found")
            if len(parts) > 2 and parts[2] == "tags":
                if method == "PUT":
                    f["tags"] = list((body or {}).get("tags", []))
                return 200, {"tags": f["tags"]}
            if method == "GET":
                return 200, {"floatingip": f}
            if method == "DELETE":
                del self._fips[rid]
                return 204, None
            if method == "PUT":
                req = (body or {}).get("floatingip", {})
                if "port_id" in req:
                    pid = req["port_id"]
                    if pid is None:
                        f.update(port_id=None, fixed_ip_address=None, status="DOWN")
                    else:
                        p = self._ports.get(pid)
                        if not p:
                            raise _neutron_err(404, "PortNotFound", f"Port {pid} could not be found.")
                        other = next(
                            (x for x in self._fips.values() if x["port_id"] == pid and x is not f), None
                        )
                        if other:
                            raise _neutron_err(
                                409,
                                "FloatingIPPortAlreadyAssociated",
                                f"Port {pid} already has floating IP {other['floating_ip_address']}",
                            )
                        f.update(
                            port_id=pid, fixed_ip_address=p["fixed_ips"][0]["ip_address"], status="ACTIVE"
                        )
                if "description" in req:
                    f["description"] = req["description"]
                return 200, {"floatingip": f}
        if kind == "security-groups":
            if rid is None and method == "GET":
                return 200, {
                    "security_groups": self._filter(list(self._secgroups.values()), query, ["id", "name"])
                }
            if rid is None and method == "POST":
                req = (body or {}).get("security_group", {})
                gid = _uuid()
                self._secgroups[gid] = {
                    "id": gid,
                    "name": req.get("name"),
                    "description": req.get("description", ""),
                    "security_group_rules": [],
                    "tenant_id": self.project_id,
                    "project_id": self.project_id,
                    "tags": [],
                }
                return 201, {"security_group": self._secgroups[gid]}
            g = self._secgroups.get(rid)
            if not g:
                raise _neutron_err(404, "SecurityGroupNotFound", f"Security group {rid} does not exist")
            if method == "DELETE":
                entry = {"name": g["name"]}
                users = [s["id"] for s in self._servers.values() if entry in s["security_groups"]]
                if users:
                    raise _neutron_err(
                        409, "SecurityGroupInUse", f"Security Group {rid} in use by {', '.join(users)}."
                    )
                del self._secgroups[rid]
                return 204, None
            return 200, {"security_group": g}
        if kind == "security-group-rules" and method == "DELETE" and rid:
            for g in self._secgroups.values():
                kept = [r for r in g["security_group_rules"] if r["id"] != rid]
                if len(kept) < len(g["security_group_rules"]):
                    g["security_group_rules"] = kept
                    return 204, None
            raise _neutron_err(404, "SecurityGroupRuleNotFound", f"Security group rule {rid} does not exist")
        if kind == "security-group-rules" and method == "POST":
            req = dict((body or {}).get("security_group_rule", {}), id=_uuid())
            g = self._secgroups.get(req.get("security_group_id"))
            if not g:
                raise _neutron_err(404, "SecurityGroupNotFound", "Security group does not exist")
            g["security_group_rules"].append(req)
            return 201, {"security_group_rule": req}
        raise _neutron_err(404, "HTTPNotFound", f"The resource could not be found: {sub}")

    # ------------------------------------------------------------------ glance
    def _glance(self, method, sub, query, body):
        parts = [p for p in sub.split("/") if p][1:]  # drop "v2"
        if parts[:1] == ["schemas"]:
            props = {
                k: {"type": ["null", "string", "integer", "boolean", "array", "object"]}
                for k in (
                    "id",
                    "name",
                    "status",
                    "visibility",
                    "created_at",
                    "updated_at",
                    "container_format",
                    "disk_format",
                    "size",
                    "tags",
                    "protected",
                    "owner",
                    "self",
                    "file",
                    "schema",
                )
            }
            image_schema = {
                "name": "image",
                "properties": props,
                "additionalProperties": {"type": "string"},
                "links": [{"rel": "self", "href": "{self}"}],
            }
            if parts[1:] == ["images"]:
                return 200, {
                    "name": "images",
                    "properties": {"images": {"type": "array", "items": image_schema}},
                    "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"}],
                }
            return 200, image_schema
        if parts[:1] == ["images"]:
            if len(parts) == 1:
                items = list(self.images.values())
                for k in ("name", "status", "visibility", "build-repo"):
                    if k in query:
                        items = [i for i in items if i.get(k) == query[k][0]]
                return 200, {"images": items, "first": "/v2/images", "schema": "/v2/schemas/images"}
            img = self.images.get(parts[1])
            if not img:
                raise HTTPError(
                    404, {"message": f"No image found with ID {parts[1]}", "code": "404 Not Found"}
                )
            return 200, img
        raise HTTPError(404, {"message": "not found"})


class _Handler(BaseHTTPRequestHandler):
    fake = None  # set by FakeChameleon.start()
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep pytest output quiet
        pass

    def _serve(self):
        fake = self.fake
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            else:
                body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        query = parse_qs(split.query)
        extra = {}
        with fake.lock:
            entry = {"method": self.command, "path": split.path, "query": split.query, "body": body}
            fake.requests.append(entry)
            try:
                result = fake.handle(self.command, split.path, query, self.headers, body)
                status, payload = result[0], result[1]
                extra = result[2] if len(result) > 2 else {}
            except HTTPError as e:
                status, payload = e.code, e.body
            except Exception as e:  # a bug in the fake: report it loudly
                status, payload = 500, {"error_message": f"fake crashed: {type(e).__name__}: {e}"}
            entry["status"] = status
            if status >= 400:
                entry["status_body"] = payload
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Openstack-Request-Id", "req-" + _uuid())
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--password", default="secret")
    ap.add_argument("--username", default="testuser")
    ap.add_argument("--capacity", action="append", default=[], metavar="NODE_TYPE=N")
    args = ap.parse_args()
    cap = dict(DEFAULT_CAPACITY)
    for c in args.capacity:
        k, v = c.split("=", 1)
        cap[k] = int(v)
    fake = FakeChameleon(port=args.port, username=args.username, password=args.password, capacity=cap)
    fake.start()
    print(f"fake Chameleon on {fake.url}; export these:")
    for k, v in fake.os_env().items():
        print(f"export {k}='{v}'")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
