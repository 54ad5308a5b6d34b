"""Shared start-up of the step scripts that Snakemake and DVC both call.

Every step runs from the project root, validates config/config.yaml against the schema (so
`dvc repro` rejects a bad value just as Snakemake does) and imports the project's package from src/.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from stages import MARKS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.json"
# A step that keeps its last good output while it runs leaves a mark here until it has replaced
# that output; the Snakefile dates the output of a marked step as stale (stages.mark_unfinished).
UNFINISHED = ROOT / MARKS


class ConfigError(SystemExit):
    """A bad config value: exits non-zero with one line naming the key, the value and the rule."""


def load_dotenv() -> None:
    """Secrets for the tracking/storage stack live in .env (gitignored); set values win."""
    from storage import load_dotenv as load

    load(ROOT)


def refuse_unmerged(root: Path = ROOT) -> None:
    """Stop, naming the files, while `copier update` (or a merge) has left conflicts unresolved.

    Copier leaves inline conflict markers and marks the files unmerged in git's index; reading such
    a config would fail obscurely or, worse, run with half of each side.
    """
    import subprocess

    proc = subprocess.run(["git", "ls-files", "--unmerged"], cwd=root, capture_output=True, text=True)
    files = sorted({line.split("\t", 1)[1] for line in proc.stdout.splitlines() if "\t" in line})
    if files:
        raise ConfigError(
            f"unresolved merge conflicts in {', '.join(files)} (left by `copier update` or a merge): "
            "edit out the <<<<<<< ======= >>>>>>> markers, then `git add` the files; nothing was run"
        )


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    import jsonschema

    refuse_unmerged()
    config = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ConfigError(f"{path.relative_to(ROOT)}: {key}: {error.message}")
    return config


def project(module: str) -> tuple[dict[str, Any], ModuleType]:
    """The validated config and `<package>.<module>` from src/."""
    load_dotenv()
    config = load_config()
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return config, importlib.import_module(f"{config['project']['package']}.{module}")


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON deterministically (sorted keys), creating the folder: DVC does not create it."""
    target = ROOT / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


@contextmanager
def keeping_last_good(stage: str, target: Path | None = None) -> Iterator[Path | None]:
    """Run a step whose output (data/raw, data/prepared, models) must survive its failure.

    Neither front end deletes these outputs before the step (Snakemake `update()`, DVC `persist`):
    the step builds the new output beside the old one (`target` given: yields that staging
    folder) and swaps it in only when complete. Until then a mark names the step, so a failed or
    killed run can never leave the old output looking up to date.
    """
    UNFINISHED.mkdir(parents=True, exist_ok=True)
    mark = UNFINISHED / stage
    mark.write_text("started\n")
    staging = None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        for leftover in target.parent.glob(f".{target.name}.*-*"):  # from a killed run
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        if staging is not None:
            old = target.with_name(f".{target.name}.old-{staging.name.rsplit('-', 1)[-1]}")
            if target.exists():
                target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    mark.unlink(missing_ok=True)
