"""Shared start-up of the step scripts that Snakemake and DVC both call.

Every step runs from the project root, validates config/config.yaml (config_check.load_config,
re-exported here: the Snakefile runs the same check, so `dvc repro` and Snakemake refuse a bad or
unknown key in the same one line), imports the project's package from src/, keeps its last good
output until the new one is complete, and logs to logs/<step>.log; where it runs (host, SLURM job,
GPUs) goes to logs/placement/<step>.json (placement.record).
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

from config_check import (  # noqa: F401  (the steps import them from here)
    CONFIG,
    SCHEMA,
    ConfigError,
    load_config,
    model_declaration,
    refuse_overrides,
    refuse_unmerged,
    validate,
)
from stages import MARKS

ROOT = Path(__file__).resolve().parents[2]
# A step that keeps its last good output while it runs leaves a mark here until it has replaced
# that output; the Snakefile dates the output of a marked step as stale (stages.mark_unfinished).
UNFINISHED = ROOT / MARKS



def load_dotenv() -> None:
    """Secrets for the tracking/storage stack live in .env (gitignored); set values win."""
    if not (ROOT / ".env").exists():
        return  # nothing to read, and no reason to import its reader
    from storage import load_dotenv as load

    load(ROOT)


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


LOGS = Path("logs")
# Steps run by a rule in workflow/rules that is not a DVC stage, and so logged as well.
LOGGED_BESIDES_STAGES = ("publish",)


class _Tee:
    """A text stream that writes to the terminal's stream and to the step's log file."""

    def __init__(self, stream: Any, log: Any) -> None:
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding...: the terminal's
        return getattr(self._stream, name)


def log_step(script: str | None = None, root: Path = ROOT) -> Path | None:
    """What a pipeline step prints (its messages, warnings, a traceback) also goes to
    logs/<step>.log: the `log:` of its Snakemake rule, and the same file under `dvc repro`. The
    terminal still shows everything, so a failure's one line stays where the user looks.

    Only for the step scripts (a DVC stage's, or publish), started as such; check_pipeline holds
    each rule's `log:` to this path. Returns the log, or None for any other script.
    """
    from stages import stage_outputs

    path = Path(script if script is not None else sys.argv[0])
    if path.suffix != ".py" or path.resolve().parent != Path(__file__).resolve().parent:
        return None
    steps = {name for name, _ in stage_outputs(root / "dvc.yaml")} | set(LOGGED_BESIDES_STAGES)
    if path.stem not in steps:
        return None
    from placement import record

    if path.stem not in LOGGED_BESIDES_STAGES:  # where this stage runs: the track step logs it
        record(path.stem, root)
    return log_to(path.stem, root)


def log_to(rule: str, root: Path = ROOT) -> Path:
    """Also write this process's output to logs/<rule>.log (the rule's `log:`), line by line, so a
    killed step leaves what it said; the terminal keeps showing everything."""
    log = root / LOGS / f"{rule}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("w", buffering=1)
    sys.stdout, sys.stderr = _Tee(sys.stdout, handle), _Tee(sys.stderr, handle)
    return log


if (ROOT / "dvc.yaml").is_file():
    log_step()
