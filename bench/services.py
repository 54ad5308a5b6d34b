"""Benchmarks for the service stack (issue: tracking and storage), side by side in one run.

1. MLflow server: start to healthy and memory (RSS of its whole process group), with the settings
   the project generates (one worker, job execution off) beside MLflow's defaults, on the same
   PostgreSQL + S3 backend.
2. DVC to the S3 endpoint: `dvc push` and `dvc pull` of 100 MB and 1 GB, against a plain boto3
   upload and download of the same file in the same run (ratio = boto3 time / DVC time), with the
   remote's transfer settings that storage.py writes (before/after: bench/dvc_transfer.py).

Usage: python bench/services.py [--sizes 100,1000]   (Markdown table; JSON in bench/results/)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import stack  # noqa: E402
import storage  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
}


def group_rss_mb(pgid: int) -> float:
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return total / 2**20


def mlflow_start(backend: str, s3_port: int, env: dict[str, str], generated: bool) -> dict[str, float]:
    port = _free()
    server_env = {
        **ENV,
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
    }
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--artifacts-destination",
        "s3://mlflow/bench",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if generated:
        cmd += ["--workers", "1"]
        server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            break
        except OSError:
            if time.monotonic() - start > 120:
                raise
            time.sleep(0.05)
    healthy = time.monotonic() - start
    time.sleep(3)
    rss = group_rss_mb(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    return {"seconds_to_healthy": round(healthy, 2), "rss_mb": round(rss)}


def _free() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def transfer(work: Path, s3_port: int, env: dict[str, str], size_mb: int) -> dict[str, float]:
    import boto3

    repo = work / f"dvc-{size_mb}"
    repo.mkdir()
    run_env = {
        **ENV,
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
    }
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "remote", "add", "-d", "s3", f"s3://dvc/bench-{size_mb}"],
        ["dvc", "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{s3_port}"],
        # the transfer settings the pipeline writes (storage.py); bench/dvc_transfer.py compares
        # them with DVC's defaults
        *(["dvc", "remote", "modify", "s3", key, value] for key, value in storage.TRANSFER_SETTINGS.items()),
    ):
        subprocess.run(cmd, cwd=repo, env=run_env, check=True, capture_output=True)
    data = repo / "blob.bin"
    with data.open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(2**20))
    subprocess.run(["dvc", "add", "blob.bin"], cwd=repo, env=run_env, check=True, capture_output=True)
    push = timed(["dvc", "push"], repo, run_env)
    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    pull = timed(["dvc", "pull"], repo, run_env)
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{s3_port}",
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    start = time.perf_counter()
    s3.upload_file(str(data), "dvc", f"boto3-{size_mb}/blob.bin")
    upload = time.perf_counter() - start
    start = time.perf_counter()
    s3.download_file("dvc", f"boto3-{size_mb}/blob.bin", str(work / f"down-{size_mb}.bin"))
    download = time.perf_counter() - start
    shutil.rmtree(repo)
    (work / f"down-{size_mb}.bin").unlink()
    return {
        "dvc_push_s": round(push, 2),
        "boto3_upload_s": round(upload, 2),
        "dvc_pull_s": round(pull, 2),
        "boto3_download_s": round(download, 2),
        "push_ratio": round(upload / push, 2),
        "pull_ratio": round(download / pull, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reprostack-bench-services-"))
    work.chmod(0o755)
    ns = argparse.Namespace(
        state=work / "state",
        env_file=work / ".env",
        postgres_port=_free(),
        mlflow_port=_free(),
        s3_port=_free(),
        no_auth=True,
        action="up",
    )
    record = stack.up(ns)
    env = stack.read_env(ns.env_file)
    backend = (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@127.0.0.1:"
        f"{ns.postgres_port}/{env['POSTGRES_DB']}"
    )
    results: dict[str, object] = {}
    try:
        results["mlflow"] = {
            "generated": mlflow_start(backend, ns.s3_port, env, generated=True),
            "defaults": mlflow_start(backend, ns.s3_port, env, generated=False),
            "stack_up_seconds_to_healthy": record["mlflow"]["seconds_to_healthy"],
        }
        results["transfer"] = {
            size: transfer(work, ns.s3_port, env, int(size)) for size in args.sizes.split(",")
        }
    finally:
        stack.down(ns)
        shutil.rmtree(work, ignore_errors=True)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "services.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["mlflow"]
    print("| MLflow server | to healthy (s) | RSS of its processes (MB) |\n| --- | --- | --- |")
    for name in ("generated", "defaults"):
        print(f"| {name} settings | {m[name]['seconds_to_healthy']} | {m[name]['rss_mb']} |")
    print("\n| size | dvc push (s) | boto3 upload (s) | ratio | dvc pull (s) | boto3 download (s) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, t in results["transfer"].items():
        print(
            f"| {size} MB | {t['dvc_push_s']} | {t['boto3_upload_s']} | {t['push_ratio']} | "
            f"{t['dvc_pull_s']} | {t['boto3_download_s']} | {t['pull_ratio']} |"
        )


if __name__ == "__main__":
    main()
