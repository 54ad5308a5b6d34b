"""The track step against a real `mlflow server` (SQLite backend) that fails under it.

A relay on loopback stands between the project and the server, as a network hop would: it counts
the requests, and at a chosen request it kills the server (SIGKILL of its process group) and stops
listening, so the client meets exactly what a dead server gives, a refused connection, at a
deterministic point: after the run was created, before anything was logged to it. The tracking
code runs unchanged (no fault hooks).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN, Project, generate, make_env, planned
from loopback import free_port

pytestmark = pytest.mark.slow

RETRIES, BACKOFF_S = 2, 1
# What one request waits at most against a refused connection: urllib3's backoff (0, then 2 x
# BACKOFF_S) plus jitter (tracking.JITTER_S = 0.5 s per retry). The failed step pays it twice:
# the failing request, then the attempt to end the run as FAILED.
GIVE_UP_S = 2 * BACKOFF_S + 0.5 * (RETRIES - 1)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "date",
              "server"}


class MlflowServer:
    """`mlflow server` with a SQLite store and proxied artifacts in `folder`, as the project's
    settings run it (one worker, job execution off). A restart keeps the store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.db = folder / "mlflow.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        env = {**make_env(self.folder), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}",
               "--artifacts-destination", str(self.folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with (self.folder / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, (
                    (self.folder / "server.log").read_text()[-2000:])
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def status(self, run_id: str) -> str:
        with sqlite3.connect(self.db) as db:
            (status,) = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        return status

    def tag(self, run_id: str, key: str) -> str | None:
        with sqlite3.connect(self.db) as db:
            row = db.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = ?",
                             (run_id, key)).fetchone()
        return row[0] if row else None


class Relay:
    """An HTTP relay on a fixed port in front of the server: one connection per request (HTTP/1.0),
    every request recorded, and an optional action after a request whose path ends with a given
    suffix (the action runs before the answer goes back)."""

    def __init__(self, backend: MlflowServer) -> None:
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self.trigger: tuple[str, Callable[[], None]] | None = None
        self.fired_at: float | None = None
        self.answer_503 = False
        self.server: http.server.ThreadingHTTPServer | None = None
        self.listen()

    def listen(self) -> None:
        relay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("?", 1)[0]
                relay.requests.append((self.command, path))
                if relay.answer_503 and path.startswith("/api/"):
                    # What `mlflow server` answers while its PostgreSQL is down (measured).
                    data = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message":
                                       "(psycopg2.OperationalError) connection to server at "
                                       '"127.0.0.1", port 5432 failed: Connection refused'}).encode()
                    status, headers = 503, [("Content-Type", "application/json")]
                else:
                    upstream = http.client.HTTPConnection("127.0.0.1", relay.backend.port, timeout=60)
                    forward = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=forward)
                    response = upstream.getresponse()
                    data, status = response.read(), response.status
                    headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    upstream.close()
                if relay.trigger and path.endswith(relay.trigger[0]):
                    action, relay.trigger = relay.trigger[1], None
                    action()
                    relay.fired_at = time.monotonic()
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop accepting connections: the port refuses them, as a dead server's does."""
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            server.server_close()


@dataclass
class Served:
    project: Project
    server: MlflowServer
    relay: Relay


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A project tracking to the server through the relay, run up to `evaluate`."""
    tmp = tmp_path_factory.mktemp("faults")
    project = generate(tmp, "p", make_env(tmp), "framework=sklearn")
    server = MlflowServer(tmp / "mlflow")
    server.start()
    relay = Relay(server)
    try:
        project.set_config("tracking.mode", "server")
        project.set_config("tracking.server_uri", relay.url)
        project.set_config("tracking.retries", RETRIES)
        project.set_config("tracking.backoff_s", BACKOFF_S)
        project.set_config("tracking.timeout_s", 10)
        project.run("git", "commit", "-qam", "Track to the test server")
        project.snakemake("results/metrics.json", "results/image.json", "results/data.json")
        yield Served(project, server, relay)
    finally:
        relay.close()
        server.kill()


def tracking_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tracking: ")]


def test_server_killed_mid_track_fails_fast_and_the_next_run_ends_the_run_failed(served: Served) -> None:
    project, server, relay = served.project, served.server, served.relay
    (project.path / "results" / "run.json").unlink(missing_ok=True)

    def die() -> None:
        server.kill()
        relay.close()

    relay.trigger = ("/api/2.0/mlflow/runs/create", die)
    failed = project.snakemake(check=False)
    elapsed = time.monotonic() - (relay.fired_at or 0)
    assert failed.returncode != 0
    assert relay.fired_at is not None, "the track step never created its run"
    # Bounded: the failing request and the attempt to end the run, each GIVE_UP_S, plus start-up
    # slack; MLflow's defaults took 4 to 8.5 minutes here.
    assert elapsed < 2 * GIVE_UP_S + 12, f"took {elapsed:.1f} s after the server died"
    assert "Traceback" not in failed.stderr
    (line,) = tracking_lines(failed.stderr)
    assert f"the MLflow server at {relay.url} refused connections" in line
    assert "stays RUNNING until the next track step marks it FAILED" in line
    assert "workflow/scripts/stack.py down, then up" in line
    pending = project.json("results/track-pending.json")
    lost = pending["run_id"]
    assert lost in line and "refused connections" in pending["error"]
    assert server.status(lost) == "RUNNING"  # the server died before it could be told otherwise
    assert not (project.path / "results" / "run.json").exists()

    # The server comes back (same store, same address): the next run ends the lost one as FAILED.
    server.start()
    relay.listen()
    assert "track" in planned(project), "a failed track step must not look up to date"
    project.snakemake()
    assert server.status(lost) == "FAILED"
    assert "refused connections" in (server.tag(lost, "track.error") or "")
    new = project.json("results/run.json")["run_id"]
    assert new != lost and server.status(new) == "FINISHED"
    assert not (project.path / "results" / "track-pending.json").exists()


def test_track_step_logs_in_few_requests(served: Served) -> None:
    """Tags with the run's creation, params and metrics in one log_batch each, the datasets in one
    log_inputs, one upload per artifact file. The code before batching made 43 requests here (3
    log_batch, 3 log_inputs, 6 metric-history reads, 4 run reads)."""
    project, server, relay = served.project, served.server, served.relay
    start = len(relay.requests)
    project.run("python", "workflow/scripts/track.py")
    requests = relay.requests[start:]
    run_id = project.json("results/run.json")["run_id"]
    assert server.status(run_id) == "FINISHED"
    calls = [f"{method} {re.sub(r'/artifacts/.*', '/artifacts/', path)}" for method, path in requests]
    uploads = calls.count("PUT /api/2.0/mlflow-artifacts/artifacts/")
    # 13 provenance files (the split's meta.json and where each step ran too), 7 of the model
    assert uploads == 13 + 7, calls
    assert calls.count("POST /api/2.0/mlflow/runs/log-batch") == 2, calls
    assert calls.count("POST /api/2.0/mlflow/runs/log-inputs") == 1, calls
    assert not any("get-history" in call for call in calls), calls
    assert len(requests) - uploads <= 14, calls
    assert len(requests) <= 34, calls


def test_database_down_mid_track_is_one_line(served: Served) -> None:
    """PostgreSQL behind the server goes down: MLflow answers 503 to everything but /health."""
    project, server, relay = served.project, served.server, served.relay

    def database_down() -> None:
        relay.answer_503 = True

    relay.trigger = ("/api/2.0/mlflow/runs/create", database_down)
    try:
        failed = project.run("python", "workflow/scripts/track.py", check=False)
    finally:
        relay.answer_503 = False
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().count("\n") == 0, failed.stderr  # exactly one line
    (line,) = tracking_lines(failed.stderr)
    assert "answered 503 Service Unavailable" in line and "PostgreSQL" in line
    lost = project.json("results/track-pending.json")["run_id"]
    # Ending it failed too (503): it waits for the next track step, as in the test above.
    assert lost in line and server.status(lost) == "RUNNING"
