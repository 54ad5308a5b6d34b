"""Where a node's results go so they outlive it: the DVC remote a remote run pushes to.

A remote run's outputs must land somewhere that survives the lease. storage.mode s3 with an
endpoint the node and this machine both reach (not a loopback address, which on the node is the
node's own stack) is used as it is: the remote `shared`, keys from .env on both sides. Otherwise
the default on Chameleon is the site's object store: Ceph's gateway serves S3 on the host and port
of the Swift endpoint in the site's service catalog, with EC2 credentials from the site's Keystone
(found, or created once, for the user and project the openrc names). That remote is `chameleon`,
written with its keys to .dvc/config.local here and on the node (mode 600, never committed).
"""

from __future__ import annotations

import configparser
import io
import os
from typing import Any
from urllib.parse import urlsplit

# Ceph's gateway refuses the checksums newer boto3 and aiobotocore send by default.
CHECKSUMS = {"AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
             "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}
NODE_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
CHAMELEON = "chameleon"


def node_local(url: str) -> bool:
    """True when a URL seen from the node names the node itself (its own stack dies with it)."""
    host = urlsplit(url).hostname or ""
    return host in NODE_LOCAL_HOSTS or host.startswith("127.")


def remote_name(config: dict[str, Any]) -> str:
    """`shared` when storage.mode s3 points at an endpoint outside the node, else `chameleon`."""
    storage = config["storage"]
    return "shared" if storage["mode"] == "s3" and not node_local(storage["endpoint"]) else CHAMELEON


def s3_endpoint() -> str | None:
    """The site's S3 endpoint: scheme, host and port of the object-store entry in the catalog
    (None where the site lists none: KVM@TACC users reach TACC's store with CHI@TACC's openrc)."""
    import chi.context

    adapter = chi.context.session()
    session = getattr(adapter, "session", adapter)
    access = session.auth.get_access(session)
    region = os.environ.get("OS_REGION_NAME")
    urls = access.service_catalog.get_urls(service_type="object-store", interface="public",
                                           region_name=region)
    if not urls:
        return None
    parts = urlsplit(urls[0])
    return f"{parts.scheme}://{parts.netloc}"


def ec2_keys() -> tuple[str, str]:
    """This user's EC2 credentials for this project at the site, made once if there are none."""
    import chi.context
    from chi.clients import keystone
    from keystoneauth1 import exceptions as ks

    adapter = chi.context.session()
    session = getattr(adapter, "session", adapter)
    user, project = session.get_user_id(), session.get_project_id()
    client = keystone()
    try:
        found = [c for c in client.ec2.list(user) if getattr(c, "tenant_id", project) == project]
        credential = found[0] if found else client.ec2.create(user, project)
    except ks.Forbidden:
        from chameleon import ChameleonError

        raise ChameleonError(
            "chameleon: Keystone refused to list or create EC2 credentials for the object store; "
            "make them with `openstack ec2 credentials create` and set storage.mode: s3 with the "
            "site's endpoint and those keys in .env") from None
    return credential.access, credential.secret


def ensure_bucket(endpoint: str, bucket: str, keys: tuple[str, str]) -> bool:
    """Create the bucket when it is missing; True when it was created."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=keys[0],
                          aws_secret_access_key=keys[1], region_name="us-east-1",
                          config=Config(request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required"))
    try:
        client.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket"):
            raise
    client.create_bucket(Bucket=bucket)
    return True


def remote_settings(endpoint: str, bucket: str, keys: tuple[str, str]) -> dict[str, str]:
    return {"url": f"s3://{bucket}/dvc", "endpointurl": endpoint,
            "access_key_id": keys[0], "secret_access_key": keys[1]}


def config_local(settings: dict[str, str]) -> str:
    """A .dvc/config.local that makes `chameleon` the default remote (the node's copy)."""
    parser = configparser.ConfigParser()
    parser["core"] = {"remote": CHAMELEON}
    parser[f"'remote \"{CHAMELEON}\"'"] = settings
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()
