"""The pipeline's own cost (#13 item 1): the default project's full run beside one hand-written
script that does the same work (bench/handwritten.py), in one run, alternating.

Per repeat: `python bench/handwritten.py` and `snakemake --cores all --forceall` on a freshly
generated default project, in alternating order. Each step's wall time comes from a `python`
(and `dvc`) shim put first on Snakemake's PATH: it stamps when every step script started and
ended, so Snakemake's own time (start-up, scheduling, onstart, the onsuccess `dvc commit`) is
what no step covered. The hand-written script times its own phases, among them the model's own
serialisation (torch.save, and the mlflow.pytorch.log_model call), which the track step is
held to. The metrics of both must agree bit for bit, or the two did not do the same work.

`--facts` prints what the project's latest MLflow run and results/ record (params, metrics,
tags, artifacts, dataset inputs, the logged model), for diffing the record before and after a
change to the pipeline.

Usage: python bench/pipeline_cost.py [--repeat N] [--project DIR] [--label NAME]
       python bench/pipeline_cost.py --facts DIR > facts.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from run import ENV, machine  # noqa: E402

# Logs start, end, exit status, CPU seconds (user + sys of the step's process tree) and argv.
SHIM = """#!/bin/bash
start=$(date +%s.%N)
"{real}" "$@"
rc=$?
end=$(date +%s.%N)
times > "$PIPELINE_COST_LOG.$$"  # in this shell: its children's user and sys time, last line
cpu=$(tail -1 "$PIPELINE_COST_LOG.$$" | sed 's/m/ /g; s/s//g' | awk '{{print $1 * 60 + $2 + $3 * 60 + $4}}')
rm -f "$PIPELINE_COST_LOG.$$"
echo "$start $end $rc $cpu {name} $*" >> "$PIPELINE_COST_LOG"
exit $rc
"""
AIM_RATIO = 1.5
TRACK_MARGIN_S = 1.0


def make_shims(folder: Path) -> Path:
    """`python` and `dvc` wrappers that log each call's start and end (bash: a few ms each)."""
    folder.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    for name in ("python", "dvc"):
        shim = folder / name
        shim.write_text(SHIM.format(real=bin_dir / name, name=name))
        shim.chmod(0o755)
    return folder


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys of the whole process tree). With other work on
    the machine, CPU time is the steadier measure of what a command costs."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def pipeline(project: Path, shims: Path) -> dict[str, Any]:
    """One `snakemake --cores all --forceall`: its wall time, each step's, and Snakemake's own."""
    log = project.parent / "steps.log"
    log.unlink(missing_ok=True)
    env = {**ENV, "PATH": f"{shims}{os.pathsep}{ENV['PATH']}", "PIPELINE_COST_LOG": str(log)}
    started = time.time()
    total, cpu = run(["snakemake", "--cores", "all", "--forceall"], project, env)
    ended = started + total
    steps: dict[str, float] = {}
    steps_cpu: dict[str, float] = {}
    spans = []
    for line in log.read_text().splitlines():
        start, end, _, step_cpu, tool, *argv = line.split()
        name = Path(argv[0]).stem if tool == "python" and argv else f"{tool} {' '.join(argv[:1])}"
        steps[name] = steps.get(name, 0.0) + float(end) - float(start)
        steps_cpu[name] = steps_cpu.get(name, 0.0) + float(step_cpu)
        spans.append((float(start), float(end)))
    spans.sort()
    covered, reach = 0.0, started
    for start, end in spans:  # the union of the step intervals
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    first = spans[0][0] if spans else ended
    last_python = max((float(row.split()[1]) for row in log.read_text().splitlines()
                       if " python " in row), default=ended)
    return {"total": total, "cpu": cpu, "steps": steps, "steps_cpu": steps_cpu,
            "snakemake_own": total - covered, "snakemake_own_cpu": cpu - sum(steps_cpu.values()),
            "before_first_step": first - started, "after_last_step": ended - last_python}


def handwritten(store: Path) -> dict[str, Any]:
    timings = store.parent / "handwritten.json"
    total, cpu = run([sys.executable, str(ROOT / "bench" / "handwritten.py"), str(store), "--timings",
                      str(timings)], store.parent, ENV)
    return {"total": total, "cpu": cpu, **json.loads(timings.read_text())}


STEPS = ("environment", "data", "prepare", "train", "evaluate", "track", "verify")


def import_profile(project: Path) -> dict[str, dict[str, Any]]:
    """Each step run once more, directly, under `python -X importtime`: its wall time, the time
    spent importing, and that time by top-level package (the sum of each module's own time), so
    the report can say which imports a step pays for."""
    profile = {}
    for step in STEPS:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-X", "importtime", f"workflow/scripts/{step}.py"],
                              cwd=project, env=ENV, capture_output=True, text=True)
        wall = time.perf_counter() - start
        by_package: dict[str, float] = {}
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            own, _, name = line[len("import time:"):].split("|")
            root = name.strip().split(".")[0]
            by_package[root] = by_package.get(root, 0.0) + int(own) / 1e6
        top = dict(sorted(by_package.items(), key=lambda kv: -kv[1])[:6])
        profile[step] = {"wall_s": wall, "imports_s": sum(by_package.values()), "top_s": top,
                         "ok": proc.returncode == 0}
    return profile


def facts(project: Path) -> dict[str, Any]:
    """What the latest MLflow run of the project and its results/ record, without the values
    that differ by nature between two runs (ids, times, durations)."""
    db = sqlite3.connect(project / "mlruns.db")
    run_id, artifact_uri, name = db.execute(
        "SELECT run_uuid, artifact_uri, name FROM runs ORDER BY start_time DESC LIMIT 1").fetchone()
    volatile = {"environment.recorded_at", "provenance.seconds", "mlflow.log-model.history"}

    def rows(sql: str) -> list[Any]:
        return [list(r) for r in db.execute(sql, (run_id,))]

    models = rows("SELECT model_id, name, status, model_type, artifact_location FROM logged_models "
                  "WHERE source_run_id = ?")
    model_facts = []
    for model_id, model_name, status, model_type, location in models:
        folder = Path(location.removeprefix("file://"))
        model_facts.append({
            "name": model_name, "status": status, "type": model_type,
            "tags": sorted(r[0] for r in db.execute(
                "SELECT tag_key FROM logged_model_tags WHERE model_id = ?", (model_id,))),
            "params": sorted(r for r in db.execute(
                "SELECT param_key, param_value FROM logged_model_params WHERE model_id = ?", (model_id,))),
            "metrics": sorted(r for r in db.execute(
                "SELECT metric_name, metric_step, metric_value FROM logged_model_metrics "
                "WHERE model_id = ?", (model_id,))),
            "files": sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()),
        })
    artifacts = Path(artifact_uri.removeprefix("file://"))
    results = {}
    for path in sorted((project / "results").glob("*")):
        try:
            content = json.loads(path.read_text())
            results[path.name] = sorted(content) if isinstance(content, dict) else f"list of {len(content)}"
        except (ValueError, UnicodeDecodeError):
            results[path.name] = "file"
    return {
        "run_name": name,
        "status": db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()[0],
        "params": dict(rows("SELECT key, value FROM params WHERE run_uuid = ? ORDER BY key")),
        "metrics": sorted(map(tuple, rows("SELECT key, step, value FROM metrics WHERE run_uuid = ?"))),
        "tags": {k: ("<varies>" if k in volatile else v)
                 for k, v in rows("SELECT key, value FROM tags WHERE run_uuid = ? ORDER BY key")},
        "artifacts": sorted(p.relative_to(artifacts).as_posix() for p in artifacts.rglob("*") if p.is_file()),
        "inputs": sorted(map(tuple, rows(
            "SELECT d.name, d.digest, d.dataset_source_type, t.value FROM inputs i "
            "JOIN datasets d ON d.dataset_uuid = i.source_id "
            "LEFT JOIN input_tags t ON t.input_uuid = i.input_uuid AND t.name = 'mlflow.data.context' "
            "WHERE i.destination_id = ?"))),
        "logged_models": model_facts,
        "results": results,
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--project", type=Path, help="an already generated project (default: a fresh one)")
    parser.add_argument("--label", default="latest", help="names the JSON in bench/results/")
    parser.add_argument("--facts", type=Path, help="print the record of this project's latest run, and stop")
    args = parser.parse_args()
    if args.facts:
        print(json.dumps(facts(args.facts), indent=1))
        return
    work = Path(tempfile.mkdtemp(prefix="reprostack-cost-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the project, its DVC remote, the shims, the store


def measure(args: argparse.Namespace, work: Path) -> None:
    """The timed runs in `work` (removed afterwards; a --project given stays as it is)."""
    project = args.project or work / "project"
    if args.project is None:
        run([sys.executable, "-m", "reprostack.cli", "new", str(project), "--defaults"], ROOT, ENV)
    shims = make_shims(work / "shims")
    store = work / "handwritten"
    # Warm-up, untimed: the stores' tables are created and the page cache holds the libraries.
    handwritten(store)
    pipeline(project, shims)
    runs: dict[str, list[dict[str, Any]]] = {"handwritten": [], "pipeline": []}
    for i in range(args.repeat):
        order = ("handwritten", "pipeline") if i % 2 == 0 else ("pipeline", "handwritten")
        for which in order:
            runs[which].append(handwritten(store) if which == "handwritten" else pipeline(project, shims))
    ours = json.loads((project / "results" / "metrics.json").read_text())
    theirs = runs["handwritten"][-1]["metrics"]
    if ours != theirs:
        sys.exit(f"bench: the pipeline's metrics {ours} differ from the hand-written script's {theirs}; "
                 "they did not do the same work")

    imports = import_profile(project)

    def med(which: str, key: str) -> float:
        return median([r[key] for r in runs[which]])

    hand, full = med("handwritten", "total"), med("pipeline", "total")
    hand_cpu, full_cpu = med("handwritten", "cpu"), med("pipeline", "cpu")
    names = list(runs["pipeline"][0]["steps"])
    steps = {name: median([r["steps"].get(name, 0.0) for r in runs["pipeline"]]) for name in names}
    steps_cpu = {name: median([r["steps_cpu"].get(name, 0.0) for r in runs["pipeline"]]) for name in names}
    phases = {key: median([r["phases"][key] for r in runs["handwritten"]])
              for key in runs["handwritten"][0]["phases"]}
    summary = {
        "machine": machine(), "repeat": args.repeat, "load_average": os.getloadavg(),
        "handwritten_s": hand, "pipeline_s": full, "ratio": full / hand, "aim_ratio": AIM_RATIO,
        "handwritten_cpu_s": hand_cpu, "pipeline_cpu_s": full_cpu, "cpu_ratio": full_cpu / hand_cpu,
        "steps_s": steps, "steps_cpu_s": steps_cpu,
        "snakemake_own_s": med("pipeline", "snakemake_own"),
        "snakemake_own_cpu_s": med("pipeline", "snakemake_own_cpu"),
        "before_first_step_s": med("pipeline", "before_first_step"),
        "after_last_step_s": med("pipeline", "after_last_step"),
        "handwritten_phases_s": phases,
        "track_minus_log_model_s": steps.get("track", float("nan")) - phases["log_model"],
        "imports": imports,
        "runs": runs,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pipeline_cost-{args.label}.json").write_text(json.dumps(summary, indent=2) + "\n")

    print(f"Machine: {summary['machine']}; load average after: "
          f"{', '.join(f'{v:.2f}' for v in summary['load_average'])}; median of {args.repeat}\n")
    print("| | wall s | CPU s |\n|---|---|---|")
    print(f"| hand-written script (bench/handwritten.py) | {hand:.2f} | {hand_cpu:.2f} |")
    print(f"| snakemake --cores all --forceall | {full:.2f} | {full_cpu:.2f} |")
    print(f"| **ratio** (aim <= {AIM_RATIO}) | **{full / hand:.2f}x** | **{full_cpu / hand_cpu:.2f}x** |")
    for name, seconds in steps.items():
        print(f"| step {name} | {seconds:.2f} | {steps_cpu[name]:.2f} |")
    print(f"| Snakemake's own (no step running) | {summary['snakemake_own_s']:.2f} | "
          f"{summary['snakemake_own_cpu_s']:.2f} |")
    print(f"| ... before the first step / after the last step script | "
          f"{summary['before_first_step_s']:.2f} / {summary['after_last_step_s']:.2f} | |")
    print("\nImports per step (run directly under -X importtime; seconds, own time by package):")
    for step, row in imports.items():
        top = ", ".join(f"{name} {seconds:.2f}" for name, seconds in row["top_s"].items())
        print(f"- {step}: {row['wall_s']:.2f} wall, {row['imports_s']:.2f} importing ({top})")
    print(f"\nHand-written phases: {', '.join(f'{k} {v:.2f}' for k, v in phases.items())}")
    print(f"Model serialisation: torch.save {phases['torch_save']:.3f} s, mlflow.pytorch.log_model "
          f"{phases['log_model']:.2f} s; track step {steps.get('track', float('nan')):.2f} s "
          f"(aim: within {TRACK_MARGIN_S:.0f} s of log_model: "
          f"{summary['track_minus_log_model_s']:+.2f} s)")


if __name__ == "__main__":
    main()
