"""Benchmarks for the generator and the generated pipeline, side by side in one run.

1. Rendering: reprostack's render step vs `copier copy` of the same template (the baseline).
2. The generated pipeline: a full run on the CPU, then a no-op rerun, with each front end.
3. Provenance capture: the time the track step spends collecting provenance (git, front end,
   versions, package list), as recorded in each MLflow run's `provenance.seconds` tag, and the
   time of the environment step's facts in-process.

Usage: python bench/run.py [--repeat N]   (prints a Markdown table; JSON in bench/results/)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "DO_NOT_TRACK": "1",
}


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def median_of(repeat: int, make_cmd, cwd: Path, fresh: Path | None = None) -> list[float]:
    times = []
    for i in range(repeat):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        times.append(timed(make_cmd(i), cwd))
    return times


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reprostack-bench-"))
    results: dict[str, object] = {"machine": machine()}
    render = (
        "import sys; from pathlib import Path; from reprostack.generate import render; "
        "render(Path(sys.argv[1]), {}, defaults=True)"
    )
    # Interleaved, so both see the same machine state.
    ours, baseline, full = [], [], []
    for i in range(args.repeat):
        baseline.append(
            timed(
                [
                    str(BIN / "copier"),
                    "copy",
                    "--defaults",
                    "--quiet",
                    "--vcs-ref",
                    "HEAD",
                    str(ROOT),
                    str(work / f"copier-{i}"),
                ],
                work,
            )
        )
        ours.append(timed([sys.executable, "-c", render, str(work / f"render-{i}")], work))
        full.append(
            timed([sys.executable, "-m", "reprostack.cli", "new", "--defaults", str(work / f"new-{i}")], work)
        )
    results["render"] = {
        "reprostack_render_s": ours,
        "copier_copy_s": baseline,
        "reprostack_new_with_git_dvc_s": full,
    }

    pipelines = {}
    for framework in ("pytorch", "sklearn"):
        project = work / f"pipe-{framework}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "reprostack.cli",
                "new",
                "--defaults",
                "--data",
                f"framework={framework}",
                str(project),
            ],
            env=ENV,
            check=True,
            capture_output=True,
        )
        clone = work / f"pipe-{framework}-dvc"
        shutil.copytree(project, clone, symlinks=True)
        full_smk = timed(["snakemake", "--cores", "all"], project)
        full_dvc = timed(["dvc", "repro"], clone)
        noop_smk = [timed(["snakemake", "--cores", "all"], project) for _ in range(args.repeat)]
        noop_dvc = [timed(["dvc", "repro"], clone) for _ in range(args.repeat)]
        prov = []
        for db_path in (project / "mlruns.db", clone / "mlruns.db"):
            with sqlite3.connect(db_path) as db:
                prov += [
                    float(v) for (v,) in db.execute("SELECT value FROM tags WHERE key = 'provenance.seconds'")
                ]
        env_facts = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys, time; sys.path.insert(0, 'src'); import importlib; "
                "p = importlib.import_module('digits_repro.provenance'); t = time.perf_counter(); "
                "p.check_lock(); p.environment(); print(time.perf_counter() - t)",
            ],
            cwd=project,
            env=ENV,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        pipelines[framework] = {
            "full_run_snakemake_s": full_smk,
            "full_run_dvc_s": full_dvc,
            "noop_snakemake_s": noop_smk,
            "noop_dvc_s": noop_dvc,
            "provenance_capture_s": prov,
            "environment_facts_s": float(env_facts),
        }
    results["pipeline"] = pipelines
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    r = results["render"]
    print(f"Machine: {results['machine']}\n")
    print("| measure | median (s) | runs |\n| --- | --- | --- |")
    print(
        f"| `copier copy --defaults` of this template (baseline) | {med(r['copier_copy_s']):.2f} | {args.repeat} |"
    )
    print(f"| reprostack render (same template) | {med(r['reprostack_render_s']):.2f} | {args.repeat} |")
    print(
        f"| `reprostack new --defaults` (render + dvc init + git commit) | {med(r['reprostack_new_with_git_dvc_s']):.2f} | {args.repeat} |"
    )
    for framework, p in pipelines.items():
        print(
            f"| {framework}: full pipeline, `snakemake --cores all` | {p['full_run_snakemake_s']:.1f} | 1 |"
        )
        print(f"| {framework}: full pipeline, `dvc repro` | {p['full_run_dvc_s']:.1f} | 1 |")
        print(
            f"| {framework}: no-op rerun, `snakemake --cores all` | {med(p['noop_snakemake_s']):.2f} | {args.repeat} |"
        )
        print(f"| {framework}: no-op rerun, `dvc repro` | {med(p['noop_dvc_s']):.2f} | {args.repeat} |")
        print(
            f"| {framework}: provenance capture in track (max of runs) | {max(p['provenance_capture_s']):.2f} | {len(p['provenance_capture_s'])} |"
        )
        print(f"| {framework}: environment facts + lock check | {p['environment_facts_s']:.2f} | 1 |")


if __name__ == "__main__":
    main()
