"""DVC transfer to the stack's S3 endpoint, side by side in one run (issue #13, item 4).

For each size, one file of random bytes is moved through the stack's own S3 endpoint
(workflow/scripts/s3_server.py: moto behind SigV4 keys, objects kept on disk):

- boto3: `upload_file` / `download_file` in this process (the baseline; boto3's defaults:
  8 MiB parts, 10 threads);
- `dvc push` / `dvc pull` (the CLI, as the pipeline runs it) to a remote with the settings
  storage.py wrote before the transfer settings ("before": url, endpointurl, keys);
- the same to a remote written by storage.py itself (`sync_remote`: "after", with
  storage.TRANSFER_SETTINGS);
- any `--try KEY=VALUE[,KEY=VALUE]` variants (remote options, or `env:NAME=VALUE` for the
  environment of the dvc commands), for tuning;
- beneath DVC, push only: s3fs's `put_file` as dvc-objects calls it for one file (its default
  50 MiB parts, 8 at a time), and the same with boto3's 8 MiB parts, a size no DVC setting
  reaches (s3fs takes it as a call argument only): where the gap to boto3 lies.

Each DVC variant pushes to its own prefix (so every push uploads) and pulls after the cache and
the file are deleted (so every pull downloads); the pulled file is checked against the original.
Ratio = boto3 time / DVC time (1.0 = as fast as boto3). With --repeat N the order of the variants
rotates between rounds and medians are reported.

Usage: python bench/dvc_transfer.py [--sizes 100,1000] [--repeat 1] [--try jobs=4]
       (Markdown table; JSON in bench/results/dvc_transfer.json)
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import stack  # noqa: E402
import storage  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "dvc"


# s3fs put_file beneath DVC, by part size: None is s3fs's default (50 MiB), 8 MiB is boto3's.
S3FS_PARTS = {"s3fs-default-parts": None, "s3fs-8MiB-parts": 8 << 20}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def _free() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout}{proc.stderr}")
    return took


def parse_try(spec: str) -> tuple[dict[str, str], dict[str, str]]:
    """'jobs=4,env:FSSPEC_S3_DEFAULT_BLOCK_SIZE=104857600' -> (remote options, environment)."""
    options, env = {}, {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key.startswith("env:"):
            env[key[4:]] = value
        else:
            options[key] = value
    return options, env


class Bench:
    def __init__(self, work: Path, port: int, keys: dict[str, str]) -> None:
        self.work, self.port, self.keys = work, port, keys
        self.endpoint = f"http://127.0.0.1:{port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DVC_", "FSSPEC_"))}
        self.env = {**base, **keys, "PATH": f"{BIN}{os.pathsep}{base['PATH']}", "DVC_NO_ANALYTICS": "1",
                    "AWS_CONFIG_FILE": str(work / "no-aws-config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials")}
        import boto3

        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"])

    def repo(self, size_mb: int, variants: dict[str, tuple[dict[str, str], dict[str, str]]]) -> Path:
        """One DVC repository holding the file, with one remote per variant."""
        repo = self.work / f"repo-{size_mb}"
        repo.mkdir()
        for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            _run(cmd, repo, self.env)
        before = {**storage.shared_settings({"bucket": BUCKET, "endpoint": self.endpoint}),
                  "access_key_id": self.keys["AWS_ACCESS_KEY_ID"],
                  "secret_access_key": self.keys["AWS_SECRET_ACCESS_KEY"]}
        for key in storage.TRANSFER_SETTINGS:
            before.pop(key, None)
        for name, (options, _) in variants.items():
            if name == "after":
                continue
            settings = {**before, "url": f"s3://{BUCKET}/{name}-{size_mb}", **options}
            _run(["dvc", "remote", "add", "--local", name, settings["url"]], repo, self.env)
            for key, value in settings.items():
                if key != "url":
                    _run(["dvc", "remote", "modify", "--local", name, key, value], repo, self.env)
        # "after": exactly what the pipeline writes (storage.sync_remote, storage.mode s3), moved
        # to its own prefix so that it uploads too.
        old = {k: os.environ.get(k) for k in self.keys}
        os.environ.update(self.keys)
        try:
            cwd = Path.cwd()
            os.chdir(repo)  # sync_remote runs `dvc` in root; PATH must find ours
            os.environ["PATH"] = self.env["PATH"]
            storage.sync_remote(repo, {"mode": "s3", "bucket": BUCKET, "endpoint": self.endpoint})
        finally:
            os.chdir(cwd)
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _run(["dvc", "remote", "rename", "--local", storage.SHARED, "after"], repo, self.env)
        _run(["dvc", "remote", "modify", "--local", "after", "url", f"s3://{BUCKET}/after-{size_mb}"],
             repo, self.env)
        data = repo / "blob.bin"
        with data.open("wb") as handle:
            for _ in range(size_mb):
                handle.write(os.urandom(2**20))
        shutil.copyfile(data, self.work / f"orig-{size_mb}.bin")
        _run(["dvc", "add", "-q", "blob.bin"], repo, self.env)
        return repo

    def boto3(self, size_mb: int, round_: int) -> dict[str, float]:
        src = self.work / f"orig-{size_mb}.bin"
        key = f"boto3-{size_mb}-{round_}/blob.bin"
        start = time.perf_counter()
        self.s3.upload_file(str(src), BUCKET, key)
        up = time.perf_counter() - start
        down_path = self.work / f"down-{size_mb}.bin"
        start = time.perf_counter()
        self.s3.download_file(BUCKET, key, str(down_path))
        down = time.perf_counter() - start
        assert filecmp.cmp(src, down_path, shallow=False), "boto3 download differs"
        down_path.unlink()
        return {"push": up, "pull": down}

    def s3fs(self, size_mb: int, round_: int, chunksize: int | None) -> dict[str, float]:
        import s3fs

        fs = s3fs.S3FileSystem(key=self.keys["AWS_ACCESS_KEY_ID"], secret=self.keys["AWS_SECRET_ACCESS_KEY"],
                               client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                               skip_instance_cache=True)
        start = time.perf_counter()
        fs.put_file(str(self.work / f"orig-{size_mb}.bin"), f"{BUCKET}/s3fs-{chunksize}-{size_mb}-{round_}/blob.bin",
                    chunksize=chunksize, max_concurrency=8)
        return {"push": time.perf_counter() - start}

    def dvc(self, repo: Path, name: str, env: dict[str, str], size_mb: int, round_: int) -> dict[str, float]:
        run_env = {**self.env, **env}
        _run(["dvc", "remote", "modify", "--local", name, "url", f"s3://{BUCKET}/{name}-{size_mb}-{round_}"],
             repo, self.env)
        push = _run(["dvc", "push", "-q", "-r", name], repo, run_env)
        # The same command with nothing left to upload: DVC's fixed cost (start-up, index, one
        # existence check), which no transfer setting touches.
        noop = _run(["dvc", "push", "-q", "-r", name], repo, run_env)
        shutil.rmtree(repo / ".dvc" / "cache")
        (repo / "blob.bin").unlink()
        pull = _run(["dvc", "pull", "-q", "-r", name], repo, run_env)
        assert filecmp.cmp(self.work / f"orig-{size_mb}.bin", repo / "blob.bin", shallow=False), (
            f"{name}: pulled file differs")
        return {"push": push, "pull": pull, "noop_push": noop}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000", help="MB (MiB), comma-separated")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--try", dest="tries", action="append", default=[],
                        help="extra variant: KEY=VALUE[,KEY=VALUE] remote options, env:NAME=VALUE")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dvc_transfer.json"))
    args = parser.parse_args()
    variants: dict[str, tuple[dict[str, str], dict[str, str]]] = {
        "before": ({}, {}),
        "after": (dict(storage.TRANSFER_SETTINGS), {}),
    }
    for i, spec in enumerate(args.tries, 1):
        variants[f"try{i}"] = parse_try(spec)
    work = Path(tempfile.mkdtemp(prefix="reprostack-bench-dvc-", dir=os.environ.get("BENCH_TMP")))
    keys = {"AWS_ACCESS_KEY_ID": "bench" + secrets.token_hex(6),
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20)}
    port = _free()
    (work / "state").mkdir()
    pid = stack.start_s3(work / "state", port, keys, [BUCKET])["pid"]
    results: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
                               "transfer_settings": storage.TRANSFER_SETTINGS,
                               "variants": {k: {"remote": o, "env": e} for k, (o, e) in variants.items()},
                               "sizes": {}}
    try:
        bench = Bench(work, port, keys)
        for size in (int(s) for s in args.sizes.split(",")):
            repo = bench.repo(size, variants)
            times: dict[str, dict[str, list[float]]] = {}
            order = ["boto3", *variants, *S3FS_PARTS]
            for round_ in range(args.repeat):
                for name in order[round_ % len(order):] + order[:round_ % len(order)]:
                    got = (bench.boto3(size, round_) if name == "boto3"
                           else bench.s3fs(size, round_, S3FS_PARTS[name]) if name in S3FS_PARTS
                           else bench.dvc(repo, name, variants[name][1], size, round_))
                    for verb, seconds in got.items():
                        times.setdefault(name, {}).setdefault(verb, []).append(round(seconds, 2))
                    print(f"  {size} MB round {round_ + 1} {name}: "
                          + ", ".join(f"{v} {s:.2f} s" for v, s in got.items()), file=sys.stderr, flush=True)
            shutil.rmtree(repo)
            (work / f"orig-{size}.bin").unlink()
            medians = {name: {verb: statistics.median(ts) for verb, ts in verbs.items()}
                       for name, verbs in times.items()}
            results["sizes"][str(size)] = {
                "runs": times,
                "median": medians,
                "ratio": {name: {verb: round(medians["boto3"][verb] / medians[name][verb], 2)
                                 for verb in ("push", "pull")}
                          for name in variants},
            }
    finally:
        os.killpg(pid, signal.SIGTERM)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['machine']}, {results['date']}; after = {storage.TRANSFER_SETTINGS}")
    print(f"repeat {args.repeat} (medians); ratio = boto3 time / DVC time\n")
    names = list(variants)
    print("| size | verb | boto3 (s) | " + " | ".join(f"dvc {n} (s) | ratio" for n in names) + " |")
    print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in names) + " |")
    for size, res in results["sizes"].items():
        for verb in ("push", "pull"):
            cells = " | ".join(f"{res['median'][n][verb]:.2f} | {res['ratio'][n][verb]:.2f}" for n in names)
            print(f"| {size} MB | {verb} | {res['median']['boto3'][verb]:.2f} | {cells} |")
    for size, res in results["sizes"].items():
        beneath = ", ".join(f"{n} {res['median'][n]['push']:.2f} s (ratio "
                            f"{res['median']['boto3']['push'] / res['median'][n]['push']:.2f})" for n in S3FS_PARTS)
        print(f"{size} MB push beneath DVC, s3fs put_file: {beneath}")
    for size, res in results["sizes"].items():
        fixed = ", ".join(f"{n} {res['median'][n]['noop_push']:.2f}" for n in names)
        print(f"{size} MB: `dvc push` with nothing to upload (fixed cost, s): {fixed}")
    for name, (options, env) in variants.items():
        if name.startswith("try"):
            print(f"{name}: remote {options} env {env}")


if __name__ == "__main__":
    main()
