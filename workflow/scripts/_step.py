"""Shared start-up of the step scripts that Snakemake and DVC both call.

Every step runs from the project root, validates config/config.yaml against the schema (so
`dvc repro` rejects a bad value just as Snakemake does) and imports the project's package from src/.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.json"


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
