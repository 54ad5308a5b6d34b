"""The service stack's S3 endpoint without Docker: moto's S3, made to keep objects and ask for keys.

MinIO cannot be installed from the registries this stack uses (PyPI, Debian, npm), and neither
candidate that can does both jobs: moto keeps everything in memory and accepts any key; npm's
s3rver keeps files on disk but only knows the public keys S3RVER/S3RVER and serves anonymous writes.
So this wraps moto's S3 (mature: multipart, checksums, bucket policies) in two WSGI layers:

- Keys: every request must carry an AWS Signature V4 (header or presigned URL) made with
  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from this process's environment (the project's .env),
  recomputed here as S3 does; absent, unknown, wrong or expired signatures get S3's 403 errors.
  Anonymous requests may only read objects that a bucket policy makes public (Principal "*"), as
  S3 does (the read-only view reviewers use). moto's management API (/moto-api, which can wipe
  everything) is closed.
- Disk: after each successful write the affected object or bucket is mirrored under --data
  (one file per object plus a small JSON sidecar, written atomically) and loaded back at start,
  so `stack.py down` then `up` keeps every bucket, object, metadata and policy. Not kept:
  unfinished multipart uploads, versioning and ACL settings.

    AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... python workflow/scripts/s3_server.py \
        --port 9000 --data .stack/s3
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

HEALTH = "/_stack/health"
MAX_SKEW_S = 15 * 60
StartResponse = Callable[..., Any]


def _error(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _split(environ: dict[str, Any]) -> tuple[str | None, str | None]:
    """(bucket, key) of a path-style request (clients of a loopback endpoint use path style)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    path = unquote(raw.split("?", 1)[0]) if raw else environ.get("PATH_INFO", "/")
    bucket, _, key = path.lstrip("/").partition("/")
    return (bucket or None), (key or None)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def public_read(policy: bytes | str | None, bucket: str, key: str) -> bool:
    """Whether a bucket policy lets anyone (Principal "*") GetObject this key, with no Deny."""
    import fnmatch

    if not policy:
        return False
    resource = f"arn:aws:s3:::{bucket}/{key}"
    allowed = False
    for statement in _listed(json.loads(policy).get("Statement", [])):
        principal = statement.get("Principal")
        anyone = principal == "*" or (isinstance(principal, dict) and "*" in _listed(principal.get("AWS")))
        actions = [a.lower() for a in _listed(statement.get("Action", []))]
        matches = (anyone and any(a in ("s3:getobject", "s3:*", "*") for a in actions)
                   and any(fnmatch.fnmatchcase(resource, r) for r in _listed(statement.get("Resource", []))))
        if matches and statement.get("Effect") == "Deny":
            return False
        allowed = allowed or (matches and statement.get("Effect") == "Allow")
    return allowed


class Authenticated:
    """Refuse what S3 would refuse: unknown keys, bad signatures, anonymous access to what no
    bucket policy makes public."""

    def __init__(self, app: Callable[..., Iterable[bytes]], access_key: str, secret_key: str,
                 policy_of: Callable[[str], bytes | None]) -> None:
        self.app, self.access_key, self.secret_key, self.policy_of = app, access_key, secret_key, policy_of

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == HEALTH:
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
            return [b"ok"]
        if path.startswith("/moto-api"):
            return _error(start_response, "403 Forbidden", "AccessDenied", "Management API closed.")
        query = environ.get("QUERY_STRING", "")
        auth = environ.get("HTTP_AUTHORIZATION")
        if auth is None and "X-Amz-Signature=" not in query:
            if "Signature=" in query:
                return _error(start_response, "403 Forbidden", "AccessDenied",
                              "Only AWS Signature Version 4 is accepted.")
            bucket, key = _split(environ)
            if (environ["REQUEST_METHOD"] in ("GET", "HEAD") and bucket and key and not query
                    and public_read(self.policy_of(bucket), bucket, key)):
                return self.app(environ, start_response)
            return _error(start_response, "403 Forbidden", "AccessDenied", "Anonymous access is denied.")
        problem = self.check(environ, auth)
        if problem:
            return _error(start_response, "403 Forbidden", *problem)
        return self.app(environ, start_response)

    def check(self, environ: dict[str, Any], auth: str | None) -> tuple[str, str] | None:
        """AWS Signature V4, in the Authorization header or in the query (presigned URLs, which
        MLflow's server hands its clients for downloads): recomputed with the one secret."""
        pairs = [pair.partition("=") for pair in environ.get("QUERY_STRING", "").split("&") if pair]
        query = [(unquote(k), unquote(v)) for k, _, v in pairs]
        if auth is not None:
            if not auth.startswith("AWS4-HMAC-SHA256 "):
                return "AccessDenied", "Only AWS Signature Version 4 is accepted."
            fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",")
                          if "=" in part)
            credential = fields.get("Credential", "")
            signed, signature = fields.get("SignedHeaders", ""), fields.get("Signature", "")
            stamp, expires = environ.get("HTTP_X_AMZ_DATE", ""), MAX_SKEW_S
            payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256", "UNSIGNED-PAYLOAD")
        else:
            given = dict(query)
            credential = given.get("X-Amz-Credential", "")
            signed, signature = given.get("X-Amz-SignedHeaders", ""), given.get("X-Amz-Signature", "")
            stamp, payload = given.get("X-Amz-Date", ""), "UNSIGNED-PAYLOAD"
            lifetime = given.get("X-Amz-Expires", "")
            expires = int(lifetime) if lifetime.isdigit() else 0
            query = [(k, v) for k, v in query if k != "X-Amz-Signature"]
        scope = credential.split("/")
        if len(scope) != 5 or not hmac.compare_digest(scope[0], self.access_key):
            return "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."
        try:
            signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return "AccessDenied", "X-Amz-Date is missing or malformed."
        now = time.time()
        if signed_at - now > MAX_SKEW_S or now - signed_at > max(expires, MAX_SKEW_S if auth else 0):
            return ("RequestTimeTooSkewed" if auth else "AccessDenied"), "Request has expired or is skewed."
        names = signed.split(";")
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/")

        def enc(text: str) -> str:
            return quote(text, safe="-_.~")

        canonical = "\n".join([
            environ["REQUEST_METHOD"],
            raw.split("?", 1)[0],
            "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(query)),
            "".join(f"{name}:{' '.join(self._header(environ, name).split())}\n" for name in names),
            signed,
            payload,
        ])
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{'/'.join(scope[1:])}\n{digest}"
        key = f"AWS4{self.secret_key}".encode()
        for part in scope[1:]:
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return ("SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you provided.")
        return None

    @staticmethod
    def _header(environ: dict[str, Any], name: str) -> str:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return environ.get(key, "")
        return environ.get(f"HTTP_{key}", "")


class DiskStore:
    """Buckets and objects as files: <data>/<bucket>/policy.json, objects/<sha256(key)>.{bin,json}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)  # private objects stay private on this machine too

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{threading.get_ident()}")
        tmp.write_bytes(data)
        tmp.replace(path)

    def _object(self, bucket: str, key: str) -> Path:
        return self.root / bucket / "objects" / hashlib.sha256(key.encode()).hexdigest()

    def save_object(self, bucket: str, key: str, fake: Any) -> None:
        path = self._object(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path.with_suffix(".bin"), fake.value)
        sidecar = {"key": key, "metadata": dict(fake.metadata), "etag": fake.etag.strip('"')}
        self._write(path.with_suffix(".json"), json.dumps(sidecar).encode())

    def drop_object(self, bucket: str, key: str) -> None:
        path = self._object(bucket, key)
        path.with_suffix(".json").unlink(missing_ok=True)
        path.with_suffix(".bin").unlink(missing_ok=True)

    def sync(self, backend: Any, bucket: str | None, key: str | None) -> None:
        """Make the disk match moto for one object, or for one bucket and its object list."""
        import shutil

        if bucket is None:
            return
        with self.lock:
            try:
                live = backend.get_bucket(bucket)
            except Exception:  # moto raises its own MissingBucket
                shutil.rmtree(self.root / bucket, ignore_errors=True)
                return
            folder = self.root / bucket
            (folder / "objects").mkdir(parents=True, exist_ok=True)
            if key is not None:
                fake = live.keys.get(key)
                if fake is None:
                    self.drop_object(bucket, key)
                else:
                    self.save_object(bucket, key, fake)
                return
            policy = backend.get_bucket_policy(bucket)
            if policy:
                self._write(folder / "policy.json", policy if isinstance(policy, bytes) else policy.encode())
            else:
                (folder / "policy.json").unlink(missing_ok=True)
            for sidecar in (folder / "objects").glob("*.json"):  # after a multi-object delete
                name = json.loads(sidecar.read_text())["key"]
                if live.keys.get(name) is None:
                    self.drop_object(bucket, name)

    def load(self, backend: Any) -> int:
        """Put every stored bucket, policy and object back into moto; returns the object count."""
        count = 0
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            backend.create_bucket(folder.name, os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
            if (folder / "policy.json").exists():
                backend.put_bucket_policy(folder.name, (folder / "policy.json").read_bytes())
            for sidecar in sorted((folder / "objects").glob("*.json")):
                blob = sidecar.with_suffix(".bin")
                if not blob.exists():
                    continue
                record = json.loads(sidecar.read_text())
                fake = backend.put_object(folder.name, record["key"], blob.read_bytes(),
                                          etag=record.get("etag"), disable_notification=True)
                fake.set_metadata(record.get("metadata") or {})
                count += 1
        return count


class Persisting:
    """After every successful write, mirror what it touched to the DiskStore."""

    def __init__(self, app: Callable[..., Iterable[bytes]], store: DiskStore, backend: Any) -> None:
        self.app, self.store, self.backend = app, store, backend

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        status: dict[str, int] = {}

        def capture(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status["code"] = int(line.split()[0])
            return start_response(line, headers, exc_info)

        body = self.app(environ, capture)
        if environ["REQUEST_METHOD"] in ("PUT", "POST", "DELETE") and status.get("code", 500) < 300:
            query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            bucket, key = _split(environ)
            if not ("partNumber" in query or "uploads" in query
                    or (environ["REQUEST_METHOD"] == "DELETE" and "uploadId" in query)):
                self.store.sync(self.backend, bucket, key)
        return body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data", type=Path, required=True, help="where objects are kept")
    args = parser.parse_args(argv)
    access_key, secret_key = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        print("s3_server: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the project's .env)",
              file=sys.stderr)
        return 2
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.s3.models import s3_backends
    from werkzeug.serving import run_simple

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    store = DiskStore(args.data.resolve())
    loaded = store.load(backend)
    def policy_of(bucket: str) -> bytes | None:
        try:
            return backend.get_bucket_policy(bucket)
        except Exception:  # moto's MissingBucket
            return None

    app = Authenticated(Persisting(DomainDispatcherApplication(create_backend_app), store, backend),
                        access_key, secret_key, policy_of)
    print(f"s3_server: {loaded} objects from {store.root}; http://{args.host}:{args.port}", flush=True)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    run_simple(args.host, args.port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
