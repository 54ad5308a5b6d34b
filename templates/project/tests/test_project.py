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
    model = module("model")
    rng = np.random.default_rng(0)
    x = rng.random((64, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    cfg = dict(CONFIG["train"], epochs=2, device="cpu")
    model.seed(1)
    _, first, _ = model.fit(x, y, 2, cfg, 1)
    model.seed(1)
    _, second, _ = model.fit(x, y, 2, cfg, 1)
    assert first == second


def test_lock_check_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    provenance = module("provenance")
    monkeypatch.setattr(provenance, "installed", lambda: {})
    with pytest.raises(SystemExit, match="not installed"):
        provenance.check_lock()
