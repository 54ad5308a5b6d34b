"""The DVC remotes: which one this machine uses, which one a stranger reads, and moving data.

Two files, two audiences:
- `.dvc/config` (committed) holds only what a reviewer of the published repository needs: the
  shared remote `shared` (S3: bucket and endpoint, no keys) and, when `storage.public_url` is set,
  `public`, a read-only HTTP(S) view of the same bucket that needs no credentials. Written by
  `publish`, never during a run, so a run does not make the tree dirty.
- `.dvc/config.local` (never committed) holds this machine's choices: the author's local folder
  remote (an absolute path, made at creation), the keys from .env, and the default remote that
  `storage.mode` selects. Rewritten cheaply on every run (one read when nothing changed).
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = "shared"
PUBLIC = "public"
LOCAL = "local"


def load_dotenv(root: Path = ROOT) -> None:
    """Secrets from .env into the environment (values already set win)."""
    from stack import read_env

    env_file = root / ".env"
    if env_file.exists():
        for key, value in read_env(env_file).items():
            os.environ.setdefault(key, value)


def read(path: Path) -> dict[str, dict[str, str]]:
    """DVC's config as {section: {key: value}}; DVC quotes some section names ('remote "x"')."""
    parser = configparser.ConfigParser()
    if path.exists():
        parser.read_string(path.read_text())
    return {name.strip("'"): dict(parser[name]) for name in parser.sections()}


def _dvc(*args: str, root: Path, hidden: str = "") -> None:
    """Run one dvc command; on a failure, exit with its last line, `hidden` (a secret among the
    arguments) masked in it."""
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        said = last_line(proc).replace(hidden, "***") if hidden else last_line(proc)
        raise SystemExit(f"storage: dvc {' '.join(args[:3])} failed: {said}")


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """DVC's own reason: the last ERROR line, without its support banner."""
    lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    lines = [line for line in lines if not re.search(r"dvc\.org/support|Having any troubles", line)]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR: ").strip()


def _section(name: str) -> str:
    return f'remote "{name}"'


# How DVC moves one large file to or from S3 (dvc 3.67, dvc-objects 5.2, dvc-s3 3.3, s3fs 2026.9;
# measured by bench/dvc_transfer.py, figures in README.md "Benchmarks"). `dvc push` hands s3fs a
# path, not a file object: dvc_objects/fs/generic.py `_put` (l. 135-160) calls
# `to_fs.put_file(path, ..., max_concurrency=jobs)` for a single file (l. 146), and `_get`
# (l. 200-215) does the same for `dvc pull`. s3fs then uploads the parts of a multipart upload
# (50 MiB each: s3fs/core.py `calculate_chunksize`, l. 247) `max_concurrency` at a time
# (`_upload_file_part_concurrent`, l. 1546-1590) and downloads ranges of `default_block_size`
# (50 MiB, l. 1666) the same way. `jobs` is the remote's own option (dvc/config_schema.py
# REMOTE_COMMON, l. 122-125); unset, it is 4 x CPU count (dvc_objects/fs/base.py l. 67, 81). With
# several files, `jobs` is the number of files moved at once and each file goes in one stream
# (generic.py l. 146). The AWS config file's `s3` transfer keys (max_concurrent_requests,
# multipart_chunksize) do nothing here: dvc-s3 3.3 reads them into `_transfer_config`
# (dvc_s3/__init__.py l. 126) and never uses it, and no DVC option sets the part size.
# Empty: DVC's defaults, until bench/dvc_transfer.py (--try jobs=N) shows a value that is faster
# at 100 MB and 1 GB. A fixed `jobs` also caps many-file pushes (4 x CPU count by default).
TRANSFER_SETTINGS: dict[str, str] = {}


def shared_settings(storage: dict[str, Any]) -> dict[str, str]:
    """The S3 remote for storage.mode s3 and for publishing (with TRANSFER_SETTINGS)."""
    return {"url": f"s3://{storage['bucket']}/dvc", "endpointurl": storage["endpoint"],
            **TRANSFER_SETTINGS}


def _ensure(root: Path, name: str, settings: dict[str, str], local: bool) -> None:
    path = root / ".dvc" / ("config.local" if local else "config")
    current = read(path)
    section = _section(name)
    flag = ["--local"] if local else []
    if section not in current:
        _dvc("remote", "add", *flag, name, settings["url"], root=root)
        current = read(path)
    for key, value in settings.items():
        if current.get(section, {}).get(key) != value:
            # "--": a value may begin with "-" (a generated secret does, one time in 64).
            _dvc("remote", "modify", *flag, "--", name, key, value, root=root,
                 hidden=value if any(w in key for w in ("secret", "token", "password")) else "")


def make_private_config(root: Path = ROOT) -> Path:
    """.dvc/config.local, mode 600 before the first key is written to it (DVC keeps the mode)."""
    secret_file = root / ".dvc" / "config.local"
    os.close(os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    secret_file.chmod(0o600)
    return secret_file


def sync_remote(root: Path = ROOT, storage: dict[str, Any] | None = None) -> str | None:
    """Make this machine's default remote follow storage.mode (only .dvc/config.local is written).

    Returns the remote's name, or None when this machine has none (a fresh clone in local mode).
    """
    if storage is None:
        storage = yaml.safe_load((root / "config" / "config.yaml").read_text())["storage"]
    local = read(root / ".dvc" / "config.local")
    chosen = local.get("core", {}).get("remote")
    name: str | None = None
    if storage["mode"] == "s3":
        load_dotenv(root)
        keys = {"access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
                "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY")}
        if all(keys.values()):
            make_private_config(root)
            _ensure(root, SHARED, {**shared_settings(storage), **keys}, local=True)
            name = SHARED
        elif chosen == SHARED:
            # No keys here (a reviewer): read what the author published instead.
            _dvc("remote", "default", "--local", "--unset", root=root)
    elif _section(LOCAL) in local:
        name = LOCAL
    if name and chosen != name:
        _dvc("remote", "default", "--local", name, root=root)
    return name or default_remote(root)


def check_bucket(root: Path, storage: dict[str, Any], timeout: float = 5) -> str | None:
    """What is wrong with this machine's access to s3://BUCKET at storage.endpoint, or None.

    One signed request (HeadBucket) with the keys from .env: a server that is down, keys it
    refuses, a bucket it lacks. The keys themselves are never part of the answer.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    load_dotenv(root)
    endpoint, bucket = storage["endpoint"], storage["bucket"]
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return f"no S3 keys for {endpoint} (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in .env)"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                          region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                          config=Config(connect_timeout=timeout, read_timeout=timeout,
                                        retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        return f"the S3 endpoint {endpoint} is unreachable (storage.endpoint; is the stack up?)"
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
            return (f"the S3 endpoint {endpoint} refused this machine's keys for bucket '{bucket}' "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in .env)")
        if code in ("404", "NoSuchBucket"):
            return f"bucket '{bucket}' does not exist at {endpoint} (storage.bucket)"
        return f"the S3 endpoint {endpoint} answered {code or error} for bucket '{bucket}'"
    except BotoCoreError as error:
        return f"the S3 endpoint {endpoint} failed: {error}"
    return None


def default_remote(root: Path = ROOT) -> str | None:
    """The remote DVC uses here: this machine's choice, else the published one."""
    for name in ("config.local", "config"):
        remote = read(root / ".dvc" / name).get("core", {}).get("remote")
        if remote:
            return remote
    return None


def publish_remotes(root: Path, storage: dict[str, Any]) -> str | None:
    """Write the remotes a stranger reads into the committed .dvc/config; returns its default.

    s3 mode: `shared` (no keys) and, with storage.public_url, `public` over HTTP(S), checked on
    download (verify) so a tampered object is refused. local mode: none (reviewers fetch the raw
    data from its pin).
    """
    if storage["mode"] != "s3":
        return None
    _ensure(root, SHARED, shared_settings(storage), local=False)
    default = SHARED
    if storage.get("public_url"):
        _ensure(root, PUBLIC, {"url": storage["public_url"].rstrip("/"), "verify": "true"}, local=False)
        default = PUBLIC
    if read(root / ".dvc" / "config").get("core", {}).get("remote") != default:
        _dvc("remote", "default", default, root=root)
    return default


def transfer(verb: str, failure: str, root: Path = ROOT, remote: str | None = None) -> str:
    """`dvc push|pull` with the remote storage.mode selects; on failure exit with `failure`, which
    may name the remote as {remote}, followed by DVC's own reason."""
    load_dotenv(root)
    remote = remote or sync_remote(root)
    if remote is None:
        sys.exit(f"{verb}: no DVC remote is set on this machine (storage.mode local and no published "
                 "remote); set storage.mode: s3 or add one with `dvc remote add -d --local NAME URL`")
    proc = subprocess.run(["dvc", verb, "--remote", remote], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{verb}: " + failure.format(remote=remote, reason=f" ({last_line(proc)})"))
    return proc.stdout.strip()


class _Corrupted(logging.Handler):
    """Collects the objects DVC refused on download because their content did not match their hash."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.paths: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r"corrupted cache file '([^']+)'", record.getMessage())
        if match:
            self.paths.append(match.group(1))


class Tampered(SystemExit):
    """The shared remote served data whose content does not match dvc.lock."""


def _lock_entry(root: Path, stage: str, out: str) -> dict[str, Any] | None:
    lock = root / "dvc.lock"
    if not lock.exists():
        return None
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage)
    if not entry:
        return None
    for item in entry.get("outs", []):
        if item.get("path") == out:
            return {"params": entry.get("params", {}), "out": item}
    return None


def restore_output(root: Path, stage: str, out: str, params: dict[str, Any]) -> str | None:
    """Pull `out` of `stage` from the DVC remote when dvc.lock pins it for exactly these params.

    Returns where it came from, or None (with a one-line reason on stderr) when it must be made
    afresh: no lock entry, other params, no remote, an unreachable or incomplete remote, missing
    credentials. Raises Tampered, naming the file, when the remote serves content that does not
    match dvc.lock (DVC checks each object on download: remotes are configured with verify).
    """
    entry = _lock_entry(root, stage, out)
    if entry is None or entry["params"].get("config/config.yaml") != params:
        return None
    load_dotenv(root)
    remote = sync_remote(root)
    if remote is None:
        print(f"{stage}: no DVC remote here; fetching from the pinned source", file=sys.stderr)
        return None
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    handler = _Corrupted()
    # DVC logs the refusal at DEBUG from this logger: listen to it alone, and keep it off DVC's own
    # handlers so nothing else becomes verbose.
    logger = logging.getLogger("dvc_data.hashfile.db")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        with Repo(str(root)) as repo:
            # Every object is fetched and checked before the workspace is touched; the old copy is
            # then replaced (force) by exactly what dvc.lock pins.
            repo.pull(targets=[out], remote=remote, force=True)
    except DvcException as error:
        if handler.paths:
            raise Tampered(_tamper_message(root, remote, entry["out"], handler.paths)) from None
        reason = " ".join(str(error).split()) or type(error).__name__
        if error.__cause__ is not None:
            reason += f": {' '.join(str(error.__cause__).split())[:200]}"
        print(f"{stage}: could not pull {out} from the DVC remote '{remote}' ({reason}); fetching from "
              "the pinned source instead", file=sys.stderr)
        return None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        logger.propagate = True
    return f"pulled from the DVC remote '{remote}', checked against dvc.lock ({entry['out'].get('md5')})"


def _tamper_message(root: Path, remote: str, out: dict[str, Any], paths: list[str]) -> str:
    """Name the files whose objects were refused, via the directory listing dvc.lock pins."""
    import json

    names = {Path(p).parent.name + Path(p).name: p for p in paths}
    files: list[str] = []
    listing_hash = str(out.get("md5", ""))
    if listing_hash.endswith(".dir"):
        listing = root / ".dvc" / "cache" / "files" / "md5" / listing_hash[:2] / listing_hash[2:]
        if listing.exists():
            for item in json.loads(listing.read_text()):
                if item["md5"] in names:
                    files.append(f"{out['path']}/{item['relpath']} (expected md5 {item['md5']})")
    if not files:
        files = [f"{out['path']} (objects {', '.join(sorted(names))})"]
    return (f"data: the DVC remote '{remote}' serves data that does not match dvc.lock: "
            + "; ".join(files) + ". Nothing from it was used; tell the author (the remote, not your "
            "clone, holds the altered data).")


if __name__ == "__main__":
    print(f"storage: DVC default remote is '{sync_remote()}'", file=sys.stderr)
