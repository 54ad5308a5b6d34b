"""What MLflow's basic auth costs the track step (issue #10, item 5).

Two real `mlflow server`s side by side, each with a SQLite backend and proxied artifacts in a temp
folder, one worker and job execution off (the project's settings): one plain, one with
`--app-name basic-auth` and an auth ini as workflow/scripts/stack.py writes it. A generated project
runs its pipeline up to `evaluate` once (local mode), then the real track step
(`python workflow/scripts/track.py`) runs against each server N times, interleaved, after one
warm-up run each (the first run creates the experiment). Reported: the track step's median time
with and without auth, the ratio, and the requests each run made (the servers' access-log lines).

    python bench/track_auth.py [--repeat 5] [--framework sklearn] [--compare-ref HEAD]
                               [--auth-cache-ttl 60]

--compare-ref REF also runs the tracking code of a git revision of this repository (its
tracking.py and track.py, swapped into a copy of the same project), in the same run, on the same
servers: before/after figures from one machine state.
--auth-cache-ttl S writes `auth_cache_ttl_seconds = S` into the auth ini (MLflow's server-side
credential cache; 60, the default, is what stack.py and docker/mlflow-auth.ini write; 0 turns the
cache off, as MLflow's own default does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}
TRACKING_PY = "templates/project/src/{{ package }}/tracking.py"
TRACK_PY = "workflow/scripts/track.py"
REQUEST = re.compile(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/[\d.]+" (\d{3})')


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `mlflow server` in its own process group; its log holds one line per request."""

    def __init__(self, work: Path, auth: bool, cache_ttl: int) -> None:
        self.folder = work / ("server-auth" if auth else "server-plain")
        self.folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.folder / "mlflow.log"
        self.password = secrets.token_urlsafe(24) if auth else ""
        env = {**ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [str(BIN / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"),
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        if auth:
            ini = self.folder / "basic_auth.ini"
            ini.write_text(  # as workflow/scripts/stack.py writes it
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{self.folder / 'basic_auth.db'}\n"
                "admin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                + (f"auth_cache_ttl_seconds = {cache_ttl}\n" if cache_ttl else "")
            )
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=self.password,
                       MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32))
            cmd += ["--app-name", "basic-auth"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1).close()
                break
            except OSError as error:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"bench: mlflow server did not start:\n"
                                     f"{self.log.read_text()[-2000:]}") from error
                time.sleep(0.1)

    def requests(self) -> list[tuple[str, str, str]]:
        return REQUEST.findall(self.log.read_text(errors="replace"))

    def client_env(self) -> dict[str, str]:
        if not self.password:
            return ENV
        return {**ENV, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": self.password}

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def point_at(project: Path, server: Server) -> None:
    config_file = project / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["tracking"]["mode"] = "server"
    config["tracking"]["server_uri"] = server.url
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(["git", "commit", "-qam", f"Track to {server.url}"], cwd=project, env=ENV, check=True)


def track(project: Path, server: Server) -> tuple[float, list[tuple[str, str, str]]]:
    before = len(server.requests())
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "workflow/scripts/track.py"], cwd=project,
                          env=server.client_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: track failed against {server.url}:\n{proc.stderr[-3000:]}")
    time.sleep(0.3)  # let the access log flush
    return elapsed, server.requests()[before:]


def prepare(work: Path, framework: str) -> Path:
    project = work / "project"
    subprocess.run([sys.executable, "-m", "reprostack.cli", "new", "--defaults", "--data",
                    f"framework={framework}", str(project)], env=ENV, check=True, capture_output=True)
    subprocess.run(["snakemake", "--cores", "all", "results/metrics.json", "results/data.json",
                    "results/image.json", "results/environment.json", "results/history.json"],
                   cwd=project, env=ENV, check=True, capture_output=True)
    return project


def swap_in(project: Path, ref: str) -> None:
    """Replace the tracking code of a project copy by that of `ref` of this repository."""
    package = yaml.safe_load((project / "config" / "config.yaml").read_text())["project"]["package"]
    for source, target in ((TRACKING_PY, f"src/{package}/tracking.py"), (TRACK_PY, TRACK_PY)):
        text = subprocess.run(["git", "show", f"{ref}:{source}"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        (project / target).write_text(text)
    subprocess.run(["git", "commit", "-qam", f"tracking code of {ref}"], cwd=project, env=ENV, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--framework", default="sklearn", choices=["sklearn", "pytorch"])
    parser.add_argument("--compare-ref", help="also run the tracking code of this git revision")
    parser.add_argument("--auth-cache-ttl", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reprostack-track-auth-"))
    servers: list[Server] = []
    try:
        base = prepare(work, args.framework)
        servers = [Server(work, auth=False, cache_ttl=0), Server(work, auth=True, cache_ttl=args.auth_cache_ttl)]
        codes = {"working tree": None, **({args.compare_ref: args.compare_ref} if args.compare_ref else {})}
        projects: dict[tuple[str, bool], Path] = {}
        for code, ref in codes.items():
            for server in servers:
                copy = work / f"p-{len(projects)}"
                shutil.copytree(base, copy, symlinks=True)
                if ref:
                    swap_in(copy, ref)
                point_at(copy, server)
                projects[code, bool(server.password)] = copy
        runs: dict[tuple[str, bool], list[tuple[float, int]]] = {key: [] for key in projects}
        shapes: dict[tuple[str, bool], list[tuple[str, str, str]]] = {}
        for key, project in projects.items():  # warm-up: creates the experiment
            track(project, servers[int(key[1])])
        for i in range(args.repeat):
            order = list(projects) if i % 2 == 0 else list(reversed(projects))
            for key in order:
                seconds, requests = track(projects[key], servers[int(key[1])])
                runs[key].append((seconds, len(requests)))
                shapes[key] = requests
    finally:
        for server in servers:
            server.stop()

    med = statistics.median
    results = {"machine": machine(), "framework": args.framework, "repeat": args.repeat,
               "auth_cache_ttl_seconds": args.auth_cache_ttl, "codes": {}}
    print(f"Machine: {results['machine']}; {args.framework} project; {args.repeat} runs each "
          f"(+1 warm-up); auth_cache_ttl_seconds={args.auth_cache_ttl}\n")
    print("| tracking code | track step, plain (s) | with basic auth (s) | ratio | requests per run "
          "| auth cost per request (ms) |\n| --- | --- | --- | --- | --- | --- |")
    for code in codes:
        plain = [s for s, _ in runs[code, False]]
        auth = [s for s, _ in runs[code, True]]
        count = med([n for _, n in runs[code, True]])
        per_request = (med(auth) - med(plain)) / count * 1000
        results["codes"][code] = {
            "plain_s": plain, "auth_s": auth, "ratio": med(auth) / med(plain),
            "requests_plain": [n for _, n in runs[code, False]],
            "requests_auth": [n for _, n in runs[code, True]],
            "requests_by_endpoint": _by_endpoint(shapes[code, True]),
        }
        print(f"| {code} | {med(plain):.2f} | {med(auth):.2f} | {med(auth) / med(plain):.2f} "
              f"| {count:.0f} | {per_request:.0f} |")
    for code in codes:
        print(f"\nRequests of one track run ({code}, with auth):")
        for endpoint, n in results["codes"][code]["requests_by_endpoint"].items():
            print(f"  {n:3}  {endpoint}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "track_auth.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)


def _by_endpoint(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for method, path, status in requests:
        path = re.sub(r"/artifacts/.*", "/artifacts/…", path.split("?", 1)[0])
        key = f"{method} {path} {status}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    main()
