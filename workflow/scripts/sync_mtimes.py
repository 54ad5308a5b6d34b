"""Align file modification times with DVC's content hashes, for a working copy Snakemake has not seen.

After `git clone` and `dvc pull`, modification times say nothing about freshness (DVC sets pulled
files to 'now'), so Snakemake's mtime trigger would rerun everything. DVC knows better: it compares
content hashes with dvc.lock. For each stage in pipeline order, outputs of an up-to-date stage get
times later than every input; outputs of a changed stage get an old time, so Snakemake reruns it.
The Snakefile calls this when .snakemake/metadata is missing; run it by hand after a `dvc pull`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stage_outputs(dvc_yaml: Path) -> list[tuple[str, list[str]]]:
    """Stages in dvc.yaml order (written in pipeline order) with their outs, metrics and plots."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    result = []
    for name, stage in stages.items():
        outs = []
        for kind in ("outs", "metrics", "plots"):
            outs += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind) or []]
        result.append((name, outs))
    return result


def _touch(path: Path, when: float) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            os.utime(child, (when, when), follow_symlinks=False)
    if path.exists():
        os.utime(path, (when, when), follow_symlinks=False)


STAMP = ".snakemake_timestamp"


def refresh_directory_stamps(root: Path = ROOT) -> None:
    """Make an edit inside a directory output visible to Snakemake.

    Snakemake dates a directory output by its marker file (or the folder itself), which an edit
    to a file inside does not touch; DVC would notice by hash. Cheap: a stat per file.
    """
    for _, outs in stage_outputs(root / "dvc.yaml"):
        for out in outs:
            folder = root / out
            if not folder.is_dir():
                continue
            marker = folder / STAMP if (folder / STAMP).exists() else folder
            newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.name != STAMP), default=0)
            if newest > marker.stat().st_mtime:
                os.utime(marker, (newest, newest))


def sync(root: Path = ROOT) -> dict[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        changed = {name.split(":")[-1] for name in repo.status()}
    now = time.time()
    outcome = {}
    for index, (name, outs) in enumerate(stage_outputs(root / "dvc.yaml")):
        fresh = name not in changed
        when = now + index * 0.01 if fresh else 1_000_000 + index
        for out in outs:
            _touch(root / out, when)
        outcome[name] = "up to date" if fresh else "changed: will rerun"
    return outcome


def commit_complete_stages(root: Path = ROOT) -> list[str]:
    """`dvc commit` the stages whose outputs all exist (after a partial run, or one that ran only
    the Chameleon rules, the others are left as they are)."""
    import subprocess

    done = [name for name, outs in stage_outputs(root / "dvc.yaml") if all((root / o).exists() for o in outs)]
    if done:
        subprocess.run(["dvc", "commit", "--force", "--quiet", *done], cwd=root, check=True)
    return done


if __name__ == "__main__":
    for stage, state in sync().items():
        print(f"sync_mtimes: {stage}: {state}", file=sys.stderr)
