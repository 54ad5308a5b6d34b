"""What Snakemake and DVC must agree on about the stages' outputs.

`stage_outputs` reads dvc.yaml (the one reader of it here); `refresh_directory_stamps` makes an
edit inside a directory output or input (reference/) visible to Snakemake;
`mark_started`/`mark_unfinished` date the kept output of a step that failed or was killed as stale,
so the next run redoes it;
`commit_complete_stages` records what a Snakemake run produced in dvc.lock and the DVC cache, and
retries at the next start when that failed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# libyaml's parser where PyYAML has it: dvc.yaml is read by every step and several times per run.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def stage_outputs(dvc_yaml: Path, kinds: tuple[str, ...] = ("outs", "metrics", "plots")
                  ) -> list[tuple[str, list[str]]]:
    """Stages in dvc.yaml order (written in pipeline order) with their outs, metrics and plots
    (or the entries of other `kinds`, such as deps)."""
    stages = yaml.load(dvc_yaml.read_text(), Loader=_LOADER)["stages"]
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
    # A source folder (reference/) edited without a newer mtime (`cp -p`, `rsync -a`, an archive)
    # differs from what its stage last read: dated now, as DVC would see it by hash.
    for name in source_directories(root):
        record = root / SOURCES / name.replace("/", "%")
        if record.exists() and record.read_text().strip() != content_hash(root / name):
            os.utime(root / name)


SOURCES = Path(".snakemake") / "reprostack" / "sources"


def source_directories(root: Path = ROOT) -> list[str]:
    """Folders a stage reads that no stage writes (reference/): Snakemake can only date them."""
    deps = {path for _, names in stage_outputs(root / "dvc.yaml", ("deps",)) for path in names}
    outs = {path for _, names in stage_outputs(root / "dvc.yaml") for path in names}
    return sorted(name for name in deps - outs if (root / name).is_dir())


def content_hash(folder: Path) -> str:
    """sha256 over the relative paths and contents of the files in a (small) folder."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAMP):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def record_sources(root: Path = ROOT) -> None:
    """Called by the step that reads the source folders (verify), under either front end: the
    content it read, which refresh_directory_stamps compares at the next Snakemake start."""
    for name in source_directories(root):
        record = root / SOURCES / name.replace("/", "%")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(content_hash(root / name) + "\n")


def date_in_pipeline_order(root: Path = ROOT) -> None:
    """Date every existing output a second after the previous stage's, in pipeline order.

    For outputs that arrived from elsewhere (collected from a node), in whatever order the copies
    happened: Snakemake would otherwise see an output older than its inputs and redo the work
    that produced exactly these files. DVC decides by hash and is not affected.
    """
    import time

    stages = stage_outputs(root / "dvc.yaml")
    when = time.time() - len(stages)
    for _, outs in stages:
        when += 1
        for name in outs:
            path = root / name
            if not path.exists():
                continue
            for item in [*path.rglob("*"), path] if path.is_dir() else [path]:
                os.utime(item, (when, when))


MARKS = Path(".snakemake") / "reprostack" / "unfinished"


def kept_stages(root: Path = ROOT) -> set[str]:
    """Stages with an output kept while they run (`persist: true` in dvc.yaml, `update()` in the
    Snakemake rules; check_pipeline holds the two equal)."""
    stages = yaml.load((root / "dvc.yaml").read_text(), Loader=_LOADER)["stages"]
    return {name for name, stage in stages.items()
            if any(isinstance(o, dict) and (next(iter(o.values())) or {}).get("persist")
                   for o in stage.get("outs") or [])}


def mark_started(root: Path, rules: set[str]) -> None:
    """Before the first job: mark every planned step that keeps its output. A step clears its
    mark only once it has replaced that output, so a step killed at any moment (even before its
    own code runs) leaves the mark, and `mark_unfinished` dates its output as stale."""
    for name in rules & kept_stages(root):
        (root / MARKS).mkdir(parents=True, exist_ok=True)
        (root / MARKS / name).write_text("planned\n")


def drop_stale_backups(root: Path = ROOT) -> None:
    """Remove Snakemake's copies of kept outputs left by a run that was killed.

    Snakemake copies an `update()` output aside before the job and puts it back if the job fails;
    a killed Snakemake leaves the copy, and the next run then stops on it (FileExistsError). The
    steps only ever swap a complete output in, so the copy is never the only good one. Skipped
    while another Snakemake holds this project's lock.
    """
    import shutil

    locks = root / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        return
    shutil.rmtree(root / ".snakemake" / "backups", ignore_errors=True)


def unfinished(root: Path = ROOT) -> set[str]:
    """Steps that started and have not replaced their kept output (see _step.keeping_last_good)."""
    marks = root / MARKS
    return {p.name for p in marks.iterdir()} if marks.is_dir() else set()


def mark_unfinished(root: Path = ROOT) -> list[str]:
    """Date the kept outputs of every step that did not finish as older than their inputs.

    Snakemake records the new parameters even for a failed `update()` job, so it would call the
    last good output up to date; dated at the epoch's first second, it is redone by the next run.
    (Directory inputs make that certain: Snakemake does not checksum them. The data step's own
    results/data.json is removed with any failure.) Returns those steps.
    """
    stages = unfinished(root)
    stale = []
    for name, outs in stage_outputs(root / "dvc.yaml"):
        if name not in stages:
            continue
        stale.append(name)
        for out in outs:
            path = root / out
            if path.is_dir():
                (path / STAMP).touch()
                os.utime(path / STAMP, (1, 1))  # not 0: Snakemake reads an mtime of 0 as "none"
            if path.exists():
                os.utime(path, (1, 1))
    return stale


UNCOMMITTED = Path(".snakemake") / "reprostack" / "uncommitted"


def commit_complete_stages(root: Path = ROOT) -> list[str]:
    """`dvc commit` the stages whose outputs all exist (after a partial run, or one that ran only
    the Chameleon rules, the others are left as they are). A step that did not finish is never
    committed: its kept output is the last good one, not what its parameters now say.

    A failure is said in one line and remembered: the next start retries it (retry_commit), so a
    run that Snakemake calls complete is never left out of dvc.lock.
    """
    import subprocess

    marker = root / UNCOMMITTED
    skip = unfinished(root)
    stages = stage_outputs(root / "dvc.yaml")
    done = [name for name, outs in stages
            if name not in skip and all((root / o).exists() for o in outs)]
    if done:
        # Every stage done (a full run): dvc.yaml as the one target, the same commit as naming
        # each stage, which makes DVC load dvc.yaml once per name (a second more on 2 cores).
        targets = ["dvc.yaml"] if len(done) == len(stages) else done
        proc = subprocess.run(["dvc", "commit", "--force", "--quiet", *targets], cwd=root,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(" ".join(done) + "\n")
            from storage import last_line

            reason = last_line(proc)
            raise SystemExit(
                f"dvc commit of {', '.join(done)} failed ({reason}); the outputs are complete but "
                "dvc.lock does not record them yet: the next `snakemake` retries the commit first"
            )
    marker.unlink(missing_ok=True)
    return done


def retry_commit(root: Path = ROOT) -> None:
    """Before anything else runs: finish a `dvc commit` that failed at the end of the last run."""
    if (root / UNCOMMITTED).exists():
        print("stages: retrying the dvc commit that failed at the end of the last run", file=sys.stderr)
        commit_complete_stages(root)
