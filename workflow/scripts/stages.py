"""What Snakemake and DVC must agree on about the stages' outputs.

`stage_outputs` reads dvc.yaml (the one reader of it here); `refresh_directory_stamps` makes an
edit inside a directory output visible to Snakemake; `commit_complete_stages` records what a
Snakemake run produced in dvc.lock and the DVC cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def stage_outputs(dvc_yaml: Path, kinds: tuple[str, ...] = ("outs", "metrics", "plots")
                  ) -> list[tuple[str, list[str]]]:
    """Stages in dvc.yaml order (written in pipeline order) with their outs, metrics and plots
    (or the entries of other `kinds`, such as deps)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    result = []
    for name, stage in stages.items():
        outs = []
        for kind in kinds:
            outs += [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind) or []]
        result.append((name, outs))
    return result


STAMP = ".snakemake_timestamp"


def refresh_directory_stamps(root: Path = ROOT) -> None:
    """Make an edit inside a directory (an output, or an input such as reference/) visible to
    Snakemake.

    Snakemake dates a directory by its marker file (or the folder itself), which an edit to a file
    inside does not touch; DVC would notice by hash. Cheap: a stat per file.
    """
    paths = stage_outputs(root / "dvc.yaml", ("outs", "deps"))
    for name in sorted({path for _, names in paths for path in names}):
        folder = root / name
        if not folder.is_dir():
            continue
        marker = folder / STAMP if (folder / STAMP).exists() else folder
        newest = max((p.stat().st_mtime for p in folder.rglob("*") if p.name != STAMP), default=0)
        if newest > marker.stat().st_mtime:
            os.utime(marker, (newest, newest))


def commit_complete_stages(root: Path = ROOT) -> list[str]:
    """`dvc commit` the stages whose outputs all exist (after a partial run, or one that ran only
    the Chameleon rules, the others are left as they are)."""
    import subprocess

    done = [name for name, outs in stage_outputs(root / "dvc.yaml") if all((root / o).exists() for o in outs)]
    if done:
        subprocess.run(["dvc", "commit", "--force", "--quiet", *done], cwd=root, check=True)
    return done
