"""Large data through the data and prepare steps, against the floor (issue #13, item 3).

For each size, a synthetic table (8 numeric features and an integer label, as CSV) is served over
HTTPS on loopback (tests/loopback.py: Python's http.server with a self-signed certificate). A
project generated with the URL source pinned by the table's sha256 runs its data and prepare steps
through Snakemake once (the pipeline as users run it), then each step script again on its own so
that its wall time and peak RSS are the step's, not Snakemake's. The floor is
`sha256sum FILE && cp FILE DST` of the same file: the least any step that must hash and land the
bytes can do. Page caches are warm for both; each command starts after a sync. "Via Snakemake"
adds Snakemake's start-up and its onsuccess `dvc commit` (DVC's md5 of the outputs and their copy
into the DVC cache).

Each size runs the floor and both steps --repeat times, interleaved; the table gives medians.
Ratios: data step time / floor time (aim <= 3), prepare step peak RSS / size of the prepared
arrays (aim <= 1.5; the interpreter's own ~100 MB dominates at small sizes).

Usage: python bench/large_data.py [--sizes 10,100,1000] [--repeat 3] [--keep]
       (Markdown table; JSON in bench/results/large_data.json)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from loopback import https_files, self_signed_cert  # noqa: E402

BIN = Path(sys.executable).parent
FEATURES = 8


def machine() -> str:
    model = platform.machine()
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def write_table(path: Path, megabytes: int, seed: int = 0) -> str:
    """About `megabytes` MB of CSV (4-decimal features, a label from 5 classes); returns its sha256."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    target, digest = megabytes * 10**6, hashlib.sha256()
    header = ",".join([*(f"f{i}" for i in range(FEATURES)), "label"]) + "\n"
    options = pcsv.WriteOptions(include_header=False, quoting_style="none")
    with path.open("wb") as handle:
        written = _emit(handle, digest, header.encode())
        while written < target:
            rows = min(200_000, max(1000, (target - written) // 60))
            x = rng.normal(0, 1, (rows, FEATURES)).round(4)
            labels = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5) + 2 * (x[:, 2] > 1)
            columns = {f"f{i}": x[:, i] for i in range(FEATURES)} | {"label": labels}
            block = pa.BufferOutputStream()
            pcsv.write_csv(pa.table(columns), block, options)
            written += _emit(handle, digest, block.getvalue().to_pybytes())
    return digest.hexdigest()


def _emit(handle: Any, digest: Any, block: bytes) -> int:
    handle.write(block)
    digest.update(block)
    return len(block)


def measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB, the largest process of the command's tree) of one command.

    Through /usr/bin/time: a process forked from this one would count this one's memory as its own
    (Linux keeps the high-water mark of the memory it replaces at exec)."""
    os.sync()  # the previous command's writes on disk first: each pays for its own
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", report.name, "-f", "%M", *cmd], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout}")
        kib = int(report.read().split()[-1])
    return {"seconds": round(took, 3), "peak_rss_mib": round(kib / 1024, 1)}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}


def bench_size(megabytes: int, work: Path, env: dict[str, str], base: str, repeat: int,
               data_module: Path | None = None) -> dict[str, Any]:
    served = work / "served"
    table = served / f"table-{megabytes}mb.csv"
    sha256 = write_table(table, megabytes)
    size = table.stat().st_size
    project = work / f"p{megabytes}"
    subprocess.run([sys.executable, "-m", "reprostack.cli", "new", str(project), "--defaults",
                    "--data", "framework=sklearn", "--data", "data_source=url",
                    "--data", f"data_url={base}/{table.name}", "--data", f"data_sha256={sha256}",
                    "--data", "data_target=label"], env=env, check=True, capture_output=True)
    if data_module is not None:  # another data.py to compare with (e.g. the one before a change)
        shutil.copyfile(data_module, project / "src" / "digits_repro" / "data.py")
    snakemake = [str(BIN / "snakemake"), "--cores", "1"]
    subprocess.run([*snakemake, "results/environment.json"], cwd=project, env=env, check=True,
                   capture_output=True)
    floor_cmd = ["bash", "-c", f"sha256sum '{table}' >/dev/null && cp '{table}' '{work}/floor.csv'"]
    runs: dict[str, list[dict[str, float]]] = {"floor": [], "data": [], "prepare": []}
    for _ in range(repeat):  # interleaved, so that all see the same load on the machine
        runs["floor"].append(measured(floor_cmd, work, env))
        (work / "floor.csv").unlink()
        for name in ("data", "prepare"):
            runs[name].append(measured([sys.executable, f"workflow/scripts/{name}.py"], project, env))
        # Fetched, not pulled: the steps run on their own leave dvc.lock without data/raw.
        assert json.loads((project / "results" / "data.json").read_text())["origin"].startswith("fetched")
    floor, step = median(runs["floor"]), {name: median(runs[name]) for name in ("data", "prepare")}
    # What the prepare step holds before it reads a byte: Python and the libraries it loads.
    start_up = measured([sys.executable, "-c", "import sys; sys.path[:0] = ['workflow/scripts', 'src']; "
                         "import _step, numpy, pyarrow.csv"], project, env)["peak_rss_mib"]
    # Last, as users run them: Snakemake's onsuccess `dvc commit` then pins data/raw in dvc.lock.
    via = {"data": measured([*snakemake, "results/data.json", "--forcerun", "data"], project, env),
           "prepare": measured([*snakemake, "data/prepared"], project, env)}
    prepared = project / "data" / "prepared"
    arrays = sum(p.stat().st_size for p in prepared.glob("*.npy"))
    assert json.loads((project / "results" / "data.json").read_text())["files"][table.name] == sha256
    table.unlink()
    shutil.rmtree(project)
    return {
        "size_mb": round(size / 1e6, 1), "prepared_arrays_mib": round(arrays / 2**20, 1), "floor": floor,
        "step": step, "via_snakemake": via, "runs": runs,
        "data_over_floor": round(step["data"]["seconds"] / floor["seconds"], 2),
        "data_via_snakemake_over_floor": round(via["data"]["seconds"] / floor["seconds"], 2),
        "prepare_rss_over_arrays": round(step["prepare"]["peak_rss_mib"] * 2**20 / arrays, 2),
        "start_up_rss_mib": start_up,
        "prepare_rss_above_start_up_over_arrays": round(
            (step["prepare"]["peak_rss_mib"] - start_up) * 2**20 / arrays, 2),
    }


def table_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| table | arrays | floor s | data s (x floor) | data RSS MiB | prepare s | prepare RSS MiB "
             "(x arrays; above start-up) | via snakemake data/prepare s |", "|---" * 8 + "|"]
    for r in rows:
        s, v = r["step"], r["via_snakemake"]
        lines.append(
            f"| {r['size_mb']} MB | {r['prepared_arrays_mib']} MiB | {r['floor']['seconds']} | "
            f"{s['data']['seconds']} ({r['data_over_floor']}x) | {s['data']['peak_rss_mib']} | "
            f"{s['prepare']['seconds']} | {s['prepare']['peak_rss_mib']} ({r['prepare_rss_over_arrays']}x; "
            f"{r['prepare_rss_above_start_up_over_arrays']}x) | "
            f"{v['data']['seconds']} / {v['prepare']['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help="table sizes in MB, comma-separated")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "large_data.json")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and each step (medians)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--data-module", type=Path, help="a data.py to put in the generated projects")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        raise SystemExit(f"--sizes: '{args.sizes}' is not a list of whole MB, e.g. 10,100,1000") from None
    work = Path(tempfile.mkdtemp(prefix="reprostack-large-"))
    (work / "served").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "HF_"))}
    cert, key = self_signed_cert(work)
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               MLFLOW_ENABLE_TELEMETRY="false", DO_NOT_TRACK="1", REQUESTS_CA_BUNDLE=str(cert))
    rows = []
    try:
        with https_files(work / "served", cert, key) as base:
            for megabytes in sizes:
                rows.append(bench_size(megabytes, work, env, base, max(1, args.repeat), args.data_module))
                print(table_md(rows[-1:]).splitlines()[-1], flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "features": FEATURES, "repeat": args.repeat, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table_md(rows))


if __name__ == "__main__":
    main()
