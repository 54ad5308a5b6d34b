"""Checks that can fail, run before any output is touched.

Snakemake calls `check` from `onstart` (after planning, before the first job), with the rules it is
about to run; the train and publish steps call it too, for `dvc repro`. Each failure is one line
naming the service, the setting to fix and that nothing was changed. Standard library only: this
runs on every start, so it costs a connection, not an import of MLflow or boto3.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# The rules that talk to the tracking server, and to the shared storage.
TRACKING_RULES = {"train", "track", "verify"}
STORAGE_RULES = {"publish"}
START = ("start it (python workflow/scripts/stack.py up, or docker compose -f docker/compose.yaml "
         "--env-file .env up -d) or set tracking.mode: local")
NOTHING_RUN = "Nothing was run, nothing was trained."


class PreflightError(SystemExit):
    """A service a planned step needs is down or refuses us; nothing was run."""


def redact(uri: str) -> str:
    """A URI without its password, for anything that is printed."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _server_error(body: bytes) -> str:
    """The first line of an MLflow error answer, without the database driver's exception class."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip().splitlines()[0][:200] if body.strip() else ""
    message = str(answer.get("message", "")).strip().splitlines()
    text = message[0] if message else ""
    if text.startswith("("):  # "(psycopg2.OperationalError) connection to server ... failed"
        text = text.split(") ", 1)[-1]
    return f"{answer.get('error_code', 'error')}: {text}"[:240]


def tracking_server(tracking: dict[str, Any], consequence: str = NOTHING_RUN,
                    read_check: bool = True) -> None:
    """The MLflow server answers, and (read_check) accepts our login and reaches its own database:
    MLflow answers 503 to a read of its store while PostgreSQL is down, though /health is fine.
    `read_check` False stops after the health check, for a caller whose first request is a
    logged-in read anyway (the track step), which reports that failure as clearly."""
    if tracking.get("mode") != "server":
        return
    base = tracking["server_uri"].rstrip("/")
    where = f"the MLflow server at {redact(base)}"
    timeout = min(int(tracking.get("timeout_s", 30)), 10)
    try:
        urllib.request.urlopen(f"{base}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise PreflightError(f"tracking: {where} is unreachable ({reason}); {START}. {consequence}") from None
    if not read_check:
        return
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        token = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            who = f"the credentials of user '{user}'" if user else "a request without credentials"
            raise PreflightError(f"tracking: {where} rejected {who} (MLFLOW_TRACKING_USERNAME / "
                                 f"MLFLOW_TRACKING_PASSWORD in .env). {consequence}") from None
        detail = _server_error(error.read())
        raise PreflightError(
            f"tracking: {where} answered HTTP {error.code} to a read of its store"
            + (f" ({detail})" if detail else "")
            + ("; its database (PostgreSQL for the service stack) is down or unreachable: check "
               "`python workflow/scripts/stack.py status`" if error.code == 503 else "; see the server's log")
            + f". {consequence}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise PreflightError(f"tracking: {where} stopped answering ({getattr(error, 'reason', error)}). "
                             f"{consequence}") from None


def shared_storage(root: Path, storage: dict[str, Any]) -> None:
    """The S3 bucket answers and accepts this machine's keys (before publishing pushes to it)."""
    if storage.get("mode") != "s3":
        return
    from storage import check_bucket

    problem = check_bucket(root, storage)
    if problem:
        raise PreflightError(f"storage: {problem}. Nothing was run.")


def check(root: Path, config: dict[str, Any], rules: set[str]) -> None:
    from storage import load_dotenv

    load_dotenv(root)
    if rules & TRACKING_RULES:
        tracking_server(config["tracking"])
    if rules & STORAGE_RULES:
        shared_storage(root, config["storage"])
