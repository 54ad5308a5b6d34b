"""The reference pipeline of this repository (the demo), run by Snakemake as `make demo` does."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, run

pytestmark = pytest.mark.slow


def test_demo_generates_reproduces_and_verifies(env: dict[str, str]) -> None:
    proc = run(["snakemake", "--cores", "all", "--forceall"], ROOT, env)
    assert "demo: OK" in proc.stdout + proc.stderr
    check = json.loads((ROOT / "build" / "demo" / "check.json").read_text())
    assert check["verify"] == "ok" and check["model_identical"] is True
    assert check["metrics"]["accuracy"] > 0.9 and check["dvc_status"] == "up to date"
