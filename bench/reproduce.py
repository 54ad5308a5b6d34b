"""A stranger's reproduction, timed: fresh clone -> verified reproduction of the default project.

The author generates the default project (PyTorch on the digits sample), runs it and publishes it
(`snakemake -c1 publish`); the repository is served by `git daemon` on loopback and the author's
folder is deleted. Then, for each front end, a fresh clone in another folder with another HOME:
set-up (git clone; the Python environment is the one this script runs in, installed apart by
`make setup`) is timed apart from the one command that recomputes and verifies. The author's own
first run is the baseline beside it. Aim: the reproduction under 2 minutes on a 2-core machine.

Usage: python bench/reproduce.py [--repeat N] [--framework pytorch|sklearn]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from loopback import git_daemon  # noqa: E402
from run import ENV, machine  # noqa: E402

AIM_SECONDS = 120.0


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start, proc.stdout + proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--framework", default="pytorch", choices=["pytorch", "sklearn"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="reprostack-bench-"))
    env = {**ENV, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    try:
        author = work / "author" / "paper"
        subprocess.run([sys.executable, "-m", "reprostack.cli", "new", str(author), "--defaults",
                        "--data", f"framework={args.framework}"], env=env, check=True, capture_output=True)
        author_run, _ = timed(["snakemake", "--cores", "all"], author, env)
        publish, _ = timed(["snakemake", "--cores", "1", "publish"], author, env)
        served = work / "served"
        subprocess.run(["git", "clone", "-q", "--bare", str(author), str(served / "paper.git")],
                       env=env, check=True)
        shutil.rmtree(work / "author")
        rows: dict[str, dict[str, list[float]]] = {}
        with git_daemon(served) as base:
            for front_end, command in (("snakemake --cores all", ["snakemake", "--cores", "all"]),
                                       ("dvc repro", ["dvc", "repro"])):
                times: dict[str, list[float]] = {"clone": [], "reproduce": []}
                for i in range(args.repeat):
                    home = work / f"home-{front_end[:3]}-{i}"
                    home.mkdir()
                    clone = work / "reviewers" / f"{front_end[:3]}-{i}" / "paper"
                    clone.parent.mkdir(parents=True)
                    reviewer_env = {**env, "HOME": str(home)}
                    seconds, _ = timed(["git", "clone", "-q", f"{base}/paper.git", str(clone)], clone.parent,
                                       reviewer_env)
                    times["clone"].append(seconds)
                    seconds, output = timed(command, clone, reviewer_env)
                    verdict = json.loads((clone / "results" / "verify.json").read_text())["status"]
                    if verdict != "ok" or "verify: reproduced" not in output:
                        sys.exit(f"bench: {front_end} in {clone} did not verify ({verdict})")
                    times["reproduce"].append(seconds)
                rows[front_end] = times
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"Machine: {machine()}; {args.framework} default project; median of {args.repeat}\n")
    print("| step | median (s) | target |")
    print("| --- | --- | --- |")
    print(f"| author: first full run, `snakemake --cores all` (baseline) | {author_run:.1f} | |")
    print(f"| author: `snakemake -c1 publish` | {publish:.1f} | |")
    for front_end, times in rows.items():
        clone_s = statistics.median(times["clone"])
        repro_s = statistics.median(times["reproduce"])
        print(f"| reviewer set-up: `git clone` (for `{front_end}`) | {clone_s:.2f} | |")
        print(f"| reviewer: fresh clone -> verified, `{front_end}` | {repro_s:.1f} "
              f"({repro_s / author_run:.2f}x the author's run) | < {AIM_SECONDS:.0f} |")


if __name__ == "__main__":
    main()
