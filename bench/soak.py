"""A bounded soak of the service stack (issue #10): load through the login, restart, nothing lost.

A generated project (sklearn) starts its stack with `workflow/scripts/stack.py up` on free ports,
login on: PostgreSQL, the S3 endpoint (workflow/scripts/s3_server.py) and `mlflow server`
(basic auth, proxied artifacts). Then:

1. Load: N client processes (default 4) start together, each with its own run in one shared
   experiment, and send B `MlflowClient.log_batch` calls each (default 50: 200 in all), every batch
   10 metrics at one step, one param and one tag, with the project's login from .env; then each
   logs two small artifacts (a text and a binary file, through the server into S3) and ends its
   run FINISHED. Every request is timed; a failed request is counted, never fatal. The client's
   own retries are off by default (--retries 0), so a refused request shows as an error here
   instead of as a slow one.
2. Memory: VmRSS summed over each service's processes (MLflow: its process group; the S3 server:
   its process group; PostgreSQL: the postmaster and its children) before the load, after it, and
   after the restart and the checks. PostgreSQL's shared buffers count once per process that has
   touched them, so its figure is an upper bound.
3. Check, before and after a restart of every service (`stack.py down`, then `stack.py up` with the
   same ports and state): every run is there and FINISHED, every metric history holds exactly the
   points that were acknowledged (count and values per key), every param and tag, and every
   artifact downloads (through MLflow's presigned S3 URLs) with identical bytes.
4. `stack.py down` always, and a check that no process of the project is left.

    python bench/soak.py [--clients 4] [--batches 50] [--metrics 10] [--artifact-kb 64]
                         [--retries 0] [--compare-no-auth] [--json FILE] [--keep]

--compare-no-auth also runs the same load against a second stack of the same project started with
`--no-auth` (after the first is down) and prints the ratios. Exit code 1 on any error or loss.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))},
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@localhost",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@localhost",
}
EXPERIMENT = "soak"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------- what each client sends


def metric_value(client: int, batch: int, key: int) -> float:
    return client * 1000 + batch + key / 8  # exact in binary floating point


def param_of(client: int, batch: int) -> tuple[str, str]:
    return f"p{batch:03d}", f"c{client}-b{batch}"


def tag_of(client: int, batch: int) -> tuple[str, str]:
    return f"soak.t{batch:03d}", f"client {client} batch {batch}"


def artifacts_of(client: int, kb: int) -> dict[str, bytes]:
    """Artifact path in the run -> exact bytes."""
    return {
        f"soak/notes-{client}.txt": f"client {client}\n".encode() * 20,
        f"soak/blob-{client}.bin": random.Random(client).randbytes(kb * 1024),
    }


def percentile(values: list[float], p: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def client_main(index: int, opts: dict[str, Any], ready: Any, go: Any, out: Any) -> None:
    """One client process: its own run, `batches` log_batch calls, two artifacts, end the run."""
    os.environ.update(opts["client_env"])
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    result: dict[str, Any] = {"client": index, "latencies": [], "errors": [], "acked": [],
                              "artifacts": {}, "artifact_latencies": [], "run_id": None}
    client = MlflowClient(opts["uri"])
    try:
        run = client.create_run(opts["experiment_id"], run_name=f"soak-{index}")
        result["run_id"] = run.info.run_id
    except Exception as error:  # counted and reported, never fatal
        result["errors"].append(f"create_run: {type(error).__name__}: {str(error)[:200]}")
    ready.put(index)
    go.wait()
    result["start"] = time.monotonic()
    run_id = result["run_id"]
    if run_id:
        base_ms = int(time.time() * 1000)
        for batch in range(opts["batches"]):
            metrics = [Metric(f"m{k}", metric_value(index, batch, k), base_ms + batch, batch)
                       for k in range(opts["metrics"])]
            params = [Param(*param_of(index, batch))]
            tags = [RunTag(*tag_of(index, batch))]
            started = time.monotonic()
            try:
                client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
                result["latencies"].append(time.monotonic() - started)
                result["acked"].append(batch)
            except Exception as error:
                result["errors"].append(f"log_batch {batch}: {type(error).__name__}: {str(error)[:200]}")
        result["batches_end"] = time.monotonic()
        with tempfile.TemporaryDirectory() as tmp:
            for path, data in artifacts_of(index, opts["artifact_kb"]).items():
                folder, name = path.rsplit("/", 1)
                local = Path(tmp) / name
                local.write_bytes(data)
                started = time.monotonic()
                try:
                    client.log_artifact(run_id, str(local), folder)
                    result["artifact_latencies"].append(time.monotonic() - started)
                    result["artifacts"][path] = hashlib.sha256(data).hexdigest()
                except Exception as error:
                    result["errors"].append(f"log_artifact {path}: {type(error).__name__}: {str(error)[:200]}")
        try:
            client.set_terminated(run_id, "FINISHED")
        except Exception as error:
            result["errors"].append(f"set_terminated: {type(error).__name__}: {str(error)[:200]}")
    result["end"] = time.monotonic()
    out.put(result)


def load(uri: str, client_env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Create the experiment, run the clients together, gather their timings."""
    import multiprocessing

    os.environ.update(client_env)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        experiment_id = client.create_experiment(EXPERIMENT)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise SystemExit(f"soak: cannot create the experiment at {uri}: {str(error)[:300]}") from None
        experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    # One fork server imports MLflow once; the clients fork from it (no 4 parallel imports on 2 cores).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow.tracking", "mlflow.entities"])
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    opts = {"uri": uri, "client_env": client_env, "experiment_id": experiment_id,
            "batches": args.batches, "metrics": args.metrics, "artifact_kb": args.artifact_kb}
    procs = [ctx.Process(target=client_main, args=(i, opts, ready, go, out), daemon=True)
             for i in range(args.clients)]
    for proc in procs:
        proc.start()
    waiting, deadline = 0, time.monotonic() + 120
    while waiting < sum(proc.is_alive() for proc in procs) and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):  # a client that died before it was ready never will be
            ready.get(timeout=1)
            waiting += 1
    go.set()
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.client_timeout
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs):  # the rest died without a word
                break
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    lost = args.clients - len(results)
    latencies = [x for r in results for x in r["latencies"]]
    span = (max(r["batches_end"] for r in results if "batches_end" in r)
            - min(r["start"] for r in results)) if any("batches_end" in r for r in results) else float("nan")
    return {
        "experiment_id": experiment_id,
        "clients": results,
        "dead_clients": lost,
        "batches_ok": len(latencies),
        "errors": [e for r in results for e in r["errors"]] + [f"{lost} client(s) never reported"] * bool(lost),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "batches_per_s": len(latencies) / span if span else float("nan"),
        "batch_span_s": span,
        "artifact_p50_ms": percentile([x for r in results for x in r["artifact_latencies"]], 50) * 1000,
        "artifact_max_ms": max((x for r in results for x in r["artifact_latencies"]), default=float("nan")) * 1000,
    }


# ---------------------------------------------------------------- checks


def check(uri: str, client_env: dict[str, str], loaded: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Everything each client had acknowledged, read back through the server (one thread per run);
    returns the problems."""
    from concurrent.futures import ThreadPoolExecutor

    os.environ.update(client_env)
    from mlflow.tracking import MlflowClient

    try:
        found = {r.info.run_id for r in MlflowClient(uri).search_runs([loaded["experiment_id"]], max_results=1000)}
    except Exception as error:
        return [f"search_runs: {type(error).__name__}: {str(error)[:160]}"]
    runs = [res for res in loaded["clients"] if res["run_id"]]
    with ThreadPoolExecutor(max_workers=max(1, len(runs))) as pool:
        found_problems = pool.map(lambda res: check_run(MlflowClient(uri), res, found, args), runs)
        return [problem for problems in found_problems for problem in problems]


def check_run(client: Any, res: dict[str, Any], found: set[str], args: argparse.Namespace) -> list[str]:
    run_id, c = res["run_id"], res["client"]
    problems: list[str] = []
    if run_id not in found:
        problems.append(f"client {c}: run {run_id} missing from search_runs")
    try:
        run = client.get_run(run_id)
    except Exception as error:
        return [*problems, f"client {c}: get_run {run_id}: {type(error).__name__}: {str(error)[:160]}"]
    if run.info.status != "FINISHED":
        problems.append(f"client {c}: run status {run.info.status}, not FINISHED")
    acked = res["acked"]
    want_params = dict(param_of(c, b) for b in acked)
    if run.data.params != want_params:
        missing = set(want_params) - set(run.data.params)
        problems.append(f"client {c}: params differ ({len(run.data.params)} found, {len(want_params)} sent"
                        + (f", missing {sorted(missing)[:5]}" if missing else "") + ")")
    want_tags = dict(tag_of(c, b) for b in acked)
    wrong = [k for k, v in want_tags.items() if run.data.tags.get(k) != v]
    if wrong:
        problems.append(f"client {c}: {len(wrong)} of {len(want_tags)} tags missing or changed, e.g. {wrong[:3]}")
    for k in range(args.metrics):
        try:
            history = client.get_metric_history(run_id, f"m{k}")
        except Exception as error:
            problems.append(f"client {c}: metric m{k}: {type(error).__name__}: {str(error)[:160]}")
            continue
        got = sorted((m.step, m.value) for m in history)
        want = sorted((b, metric_value(c, b, k)) for b in acked)
        if got != want:
            problems.append(f"client {c}: metric m{k} has {len(got)} points, {len(want)} acknowledged"
                            + ("" if len(got) != len(want) else " (values differ)"))
    with tempfile.TemporaryDirectory() as tmp:
        for path, digest in res["artifacts"].items():
            try:  # MLflow hands out a presigned S3 URL and the client fetches from the S3 endpoint
                local = client.download_artifacts(run_id, path, tmp)
                if hashlib.sha256(Path(local).read_bytes()).hexdigest() != digest:
                    problems.append(f"client {c}: artifact {path} differs after download")
            except Exception as error:
                problems.append(f"client {c}: artifact {path}: {type(error).__name__}: {str(error)[:160]}")
    return problems


# ---------------------------------------------------------------- the stack and its memory


def stack(project: Path, action: str, flags: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "workflow/scripts/stack.py", action, *flags], cwd=project,
                          env=ENV, capture_output=True, text=True, timeout=240)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"soak: stack.py {action} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout.strip()


def _procs() -> list[tuple[int, int, int]]:
    """(pid, ppid, pgid) of every process."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rows.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return rows


def _cpu_s(pid: int) -> float:
    """utime + stime, plus those of its reaped children (exited PostgreSQL backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(state: Path) -> dict[str, dict[str, float]]:
    """VmRSS (MB) and process count per service, from stack.json and postmaster.pid."""
    record = json.loads((state / "stack.json").read_text())
    rows = _procs()
    groups = {
        "mlflow": [pid for pid, _, pgid in rows if pgid == record["mlflow"]["pid"]],
        "s3": [pid for pid, _, pgid in rows if pgid == record["s3"]["pid"]],
    }
    postmaster = int((Path(record["postgres"]["data"]) / "postmaster.pid").read_text().split()[0])
    groups["postgres"] = [postmaster] + [pid for pid, ppid, _ in rows if ppid == postmaster]
    return {name: {"rss_mb": round(sum(_rss_kb(p) for p in pids) / 1024, 1), "processes": len(pids),
                   "cpu_s": round(sum(_cpu_s(p) for p in pids), 2)}
            for name, pids in groups.items()}


def server_requests(state: Path) -> dict[str, int]:
    """What MLflow's access log (kept across the restart) says it answered."""
    import re

    found = re.findall(r'"(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/[\d.]+" (\d{3})',
                       (state / "mlflow.log").read_text(errors="replace"))
    return {
        "total": len(found),
        "not_2xx": sum(not code.startswith("2") for _, _, code in found),
        "presigned_download_urls": sum("/mlflow-artifacts/presigned/" in path for _, path, _ in found),
        "proxied_artifact_gets": sum(method == "GET" and "/mlflow-artifacts/artifacts/" in path
                                     for method, path, _ in found),
    }


def leftovers(path: Path) -> list[str]:
    proc = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True)
    return [line for line in proc.stdout.splitlines() if line.split(" ", 1)[0] != str(os.getpid())]


# ---------------------------------------------------------------- main


def soak_one(project: Path, flags: list[str], creds: dict[str, str], uri: str,
             args: argparse.Namespace, restart: bool) -> dict[str, Any]:
    state = project / flags[flags.index("--state") + 1]
    out: dict[str, Any] = {}
    out["up_s"], out["up_line"] = stack(project, "up", flags)
    out["mem_before"] = memory(state)
    started = time.monotonic()
    out["loadavg_before_load"] = os.getloadavg()[0]
    out["load"] = load(uri, creds, args)
    out["load_wall_s"] = time.monotonic() - started
    time.sleep(0.5)
    out["mem_after_load"] = memory(state)
    out["load_cpu_s"] = {svc: round(out["mem_after_load"][svc]["cpu_s"] - out["mem_before"][svc]["cpu_s"], 2)
                         for svc in ("mlflow", "s3", "postgres")}
    if not restart:
        return out
    started = time.monotonic()
    out["problems_before_restart"] = check(uri, creds, out["load"], args)
    out["check_s"] = time.monotonic() - started
    out["down_s"], _ = stack(project, "down", flags)
    out["restart_up_s"], out["restart_up_line"] = stack(project, "up", flags)
    started = time.monotonic()
    out["problems_after_restart"] = check(uri, creds, out["load"], args)
    out["check_after_s"] = time.monotonic() - started
    out["mem_after_restart"] = memory(state)
    out["requests"] = server_requests(state)
    return out


def report(name: str, res: dict[str, Any], args: argparse.Namespace) -> None:
    ld = res["load"]
    sent = args.clients * args.batches
    print(f"\n### {name}\n")
    print(f"stack up: {res['up_s']:.1f} s ({res['up_line'].splitlines()[0]})")
    print(f"machine load average (1 min) just before the load: {res['loadavg_before_load']:.1f}")
    print(f"load: {ld['batches_ok']}/{sent} log_batch calls acknowledged ({args.metrics} metrics + 1 param "
          f"+ 1 tag each) from {args.clients} clients in {ld['batch_span_s']:.1f} s, "
          f"{len(ld['errors'])} errors; whole load incl. client start-up {res['load_wall_s']:.1f} s\n")
    print("| log_batch p50 (ms) | p95 (ms) | max (ms) | batches/s | artifact upload p50 / max (ms) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {ld['p50_ms']:.0f} | {ld['p95_ms']:.0f} | {ld['max_ms']:.0f} | {ld['batches_per_s']:.1f} "
          f"| {ld['artifact_p50_ms']:.0f} / {ld['artifact_max_ms']:.0f} |")
    phases = [("before load", "mem_before"), ("after load", "mem_after_load"),
              ("after restart + checks", "mem_after_restart")]
    phases = [(label, key) for label, key in phases if key in res]
    print("\n| VmRSS, MB (processes) | " + " | ".join(label for label, _ in phases) + " |")
    print("| --- |" + " --- |" * len(phases))
    for svc in ("mlflow", "s3", "postgres"):
        cells = [f"{res[key][svc]['rss_mb']:.0f} ({res[key][svc]['processes']})" for _, key in phases]
        print(f"| {svc} | " + " | ".join(cells) + " |")
    total = [sum(res[key][s]["rss_mb"] for s in ("mlflow", "s3", "postgres")) for _, key in phases]
    print("| total | " + " | ".join(f"{t:.0f}" for t in total) + " |")
    sent = max(1, ld["batches_ok"])
    cpu = res["load_cpu_s"]
    print("\nCPU used during the load (s): " + ", ".join(f"{svc} {v:.1f}" for svc, v in cpu.items())
          + f"; MLflow server CPU per log_batch (ms, artifacts included): {cpu['mlflow'] / sent * 1000:.0f}")
    if "requests" in res:
        r = res["requests"]
        print(f"\nMLflow's access log, whole run: {r['total']} requests, {r['not_2xx']} not 2xx; artifact "
              f"downloads: {r['presigned_download_urls']} presigned S3 URLs handed out, "
              f"{r['proxied_artifact_gets']} proxied GETs")
    for error in ld["errors"][:10]:
        print(f"  error: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batches", type=int, default=50, help="log_batch calls per client")
    parser.add_argument("--metrics", type=int, default=10, help="metrics per batch (one step)")
    parser.add_argument("--artifact-kb", type=int, default=64, help="size of each run's binary artifact")
    parser.add_argument("--retries", type=int, default=0,
                        help="MLFLOW_HTTP_REQUEST_MAX_RETRIES for the clients (0: every refusal is an error)")
    parser.add_argument("--client-timeout", type=float, default=300, help="seconds to wait for the clients")
    parser.add_argument("--framework", default="sklearn", choices=["sklearn", "pytorch"])
    parser.add_argument("--compare-no-auth", action="store_true",
                        help="also run the load against a --no-auth stack and print the ratios")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, state)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="reprostack-soak-"))
    work.chmod(0o755)  # the postgres user keeps its data in the project's .stack/
    project = work / "proj"
    results: dict[str, Any] = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    failures: list[str] = []
    flags_sets: list[list[str]] = []
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "reprostack.cli", "new", str(project), "--defaults",
                        "--data", f"framework={args.framework}"], env=ENV, check=True, capture_output=True)
        env_values = dict(line.split("=", 1) for line in (project / ".env").read_text().splitlines()
                          if "=" in line and not line.startswith("#"))
        base_env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(args.retries), "MLFLOW_ENABLE_TELEMETRY": "false",
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
        creds = {**base_env, "MLFLOW_TRACKING_USERNAME": env_values["MLFLOW_TRACKING_USERNAME"],
                 "MLFLOW_TRACKING_PASSWORD": env_values["MLFLOW_TRACKING_PASSWORD"]}
        pg, ml, s3 = free_ports(3)
        flags = ["--state", ".stack", "--postgres-port", str(pg), "--mlflow-port", str(ml), "--s3-port", str(s3)]
        flags_sets.append(flags)
        auth = soak_one(project, flags, creds, f"http://127.0.0.1:{ml}", args, restart=True)
        results["auth"] = auth
        stack(project, "down", flags)
        flags_sets.remove(flags)
        report("login on (the project's stack)", auth, args)
        print(f"\nrestart: `stack.py down` {auth['down_s']:.1f} s, `stack.py up` {auth['restart_up_s']:.1f} s "
              f"({auth['restart_up_line'].splitlines()[0]})")
        print(f"checks: {auth['check_s']:.1f} s before the restart, {auth['check_after_s']:.1f} s after")
        for label, key in (("before the restart", "problems_before_restart"),
                           ("after the restart", "problems_after_restart")):
            for problem in auth[key]:
                failures.append(f"{label}: {problem}")
        failures += [f"load: {e}" for e in auth["load"]["errors"]]
        if args.compare_no_auth:
            pg, ml, s3 = free_ports(3)
            flags = ["--state", ".stack-noauth", "--postgres-port", str(pg), "--mlflow-port", str(ml),
                     "--s3-port", str(s3), "--no-auth"]
            flags_sets.append(flags)
            plain = soak_one(project, flags, base_env, f"http://127.0.0.1:{ml}", args, restart=False)
            results["no_auth"] = plain
            stack(project, "down", flags)
            flags_sets.remove(flags)
            report("login off (`stack.py up --no-auth`), same load", plain, args)
            a, p = auth["load"], plain["load"]
            print("\n| login on / login off | p50 | p95 | batches/s | MLflow CPU during load | "
                  "MLflow VmRSS after load |")
            print("| --- | --- | --- | --- | --- | --- |")
            print(f"| ratio | {a['p50_ms'] / p['p50_ms']:.2f} | {a['p95_ms'] / p['p95_ms']:.2f} | "
                  f"{a['batches_per_s'] / p['batches_per_s']:.2f} | "
                  f"{auth['load_cpu_s']['mlflow'] / plain['load_cpu_s']['mlflow']:.2f} | "
                  f"{auth['mem_after_load']['mlflow']['rss_mb'] / plain['mem_after_load']['mlflow']['rss_mb']:.2f} |")
            failures += [f"load (no auth): {e}" for e in plain["load"]["errors"]]
    except (Exception, SystemExit) as error:  # a stack that did not start, a refused login: say so, clean up
        failures.append(f"aborted: {type(error).__name__}: {str(error)[:1500]}")
    finally:
        for flags in flags_sets:  # only those still up after an exception
            subprocess.run([sys.executable, "workflow/scripts/stack.py", "down", *flags], cwd=project,
                           env=ENV, capture_output=True)
        left = leftovers(work)
        if left:
            failures.append(f"{len(left)} process(es) of {work} still running after down: {left[:3]}")
        results["total_s"] = time.monotonic() - started
        if args.json:
            args.json.write_text(json.dumps({**results, "failures": failures}, indent=2, default=str) + "\n")
        if args.keep:
            print(f"\nkept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    runs = args.clients
    sent = args.clients * args.batches
    print(f"\nMachine: {results['machine']}; load average at the end {os.getloadavg()[0]:.1f}; total {results['total_s']:.0f} s; nothing left running: "
          f"{'yes' if not left else 'NO'}")
    if failures:
        print(f"SOAK FAILED: {len(failures)} problem(s)")
        for failure in failures[:30]:
            print(f"  - {failure}")
        return 1
    print(f"SOAK PASSED: {runs} runs FINISHED, {sent} batches ({sent * args.metrics} metric points, "
          f"{sent} params, {sent} tags) and {2 * runs} artifacts intact after a restart of every service; "
          "0 errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
