"""Shared fixtures: the environment every subprocess gets, and a handle on generated projects."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_env(tmp: Path) -> dict[str, str]:
    """A clean subprocess environment: our venv first, no analytics, private caches."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HF_", "DVC_"))}
    return {
        **base,
        "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        "HF_HOME": str(tmp / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
    }


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def reprostack(args: list[str], env: dict[str, str], cwd: Path = ROOT, check: bool = True):
    return run([sys.executable, "-m", "reprostack.cli", *args], cwd, env, check=check)


def table_csv(rows: int = 300, seed: int = 0) -> bytes:
    """A small 3-class table with string labels, for the non-sample data sources."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (3, 5))
    labels = rng.integers(0, 3, rows)
    x = centres[labels] + rng.normal(0, 1, (rows, 5))
    lines = ["f0,f1,f2,f3,f4,species"]
    lines += [",".join(f"{v:.5f}" for v in row) + f",{'abc'[c]}" for row, c in zip(x, labels, strict=True)]
    return ("\n".join(lines) + "\n").encode()


@dataclass
class Project:
    """A generated project and the ways a test inspects it."""

    path: Path
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(list(cmd), self.path, self.env, check=check)

    def snakemake(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("snakemake", "--cores", "all", *args, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("dvc", *args, check=check)

    def json(self, rel: str) -> Any:
        return json.loads((self.path / rel).read_text())

    @property
    def config(self) -> dict[str, Any]:
        return yaml.safe_load((self.path / "config" / "config.yaml").read_text())

    def set_config(self, dotted: str, value: Any) -> None:
        config = self.config
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
        (self.path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Query the MLflow SQLite store directly."""
        with sqlite3.connect(self.path / "mlruns.db") as db:
            return db.execute(query, args).fetchall()

    def copy_to(self, dst: Path) -> Project:
        shutil.copytree(self.path, dst, symlinks=True)
        return Project(dst, self.env)


def planned(project: Project) -> set[str]:
    """The rules a Snakemake dry run would execute now."""
    out = project.snakemake("-n").stdout
    return set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}


def generate(tmp: Path, name: str, env: dict[str, str], *answers: str) -> Project:
    args = ["new", str(tmp / name), "--defaults"]
    for answer in answers:
        args += ["--data", answer]
    reprostack(args, env)
    return Project(tmp / name, env)
