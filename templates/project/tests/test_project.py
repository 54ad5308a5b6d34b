"""The project's own checks: config, pipeline definitions, data and model code."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

import _step  # noqa: E402

CONFIG = _step.load_config()
PKG = CONFIG["project"]["package"]


def module(name: str):
    return importlib.import_module(f"{PKG}.{name}")


def test_config_is_valid() -> None:
    assert CONFIG["seed"] >= 0


def test_dvc_and_snakemake_agree() -> None:
    proc = subprocess.run(
        [sys.executable, "workflow/scripts/check_pipeline.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_split_is_seeded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = ["a,b,label"] + [f"{rng.random()},{rng.random()},{i % 2}" for i in range(40)]
    (raw / "t.csv").write_text("\n".join(rows) + "\n")
    cfg = {"seed": 3, "data": {"target": "label"}, "prepare": {"test_size": 0.25}}
    data = module("data")
    data.prepare(raw, tmp_path / "p1", cfg)
    data.prepare(raw, tmp_path / "p2", cfg)
    for name in ("x_train.npy", "y_test.npy"):
        assert (tmp_path / "p1" / name).read_bytes() == (tmp_path / "p2" / name).read_bytes()


def test_training_is_deterministic() -> None:
    model, contract = module("model"), module("contract")
    rng = np.random.default_rng(0)
    x = rng.random((64, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    params = dict(contract.params(model, CONFIG), epochs=2)
    train = dict(CONFIG["train"], device="cpu") if model.FRAMEWORK == "pytorch" else CONFIG["train"]
    runs = []
    for _ in range(2):
        if hasattr(model, "seed"):
            model.seed(1)
        runs.append(model.fit(x, y, 2, params, 1, train)[1])
    assert runs[0] == runs[1]


def test_lock_check_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    provenance = module("provenance")
    monkeypatch.setattr(provenance, "installed", lambda: {})
    with pytest.raises(SystemExit, match="not installed"):
        provenance.check_lock()
