"""Training entry point: seed everything, fit, save the model and how it was trained."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from . import contract, data, model, provenance


def seed_everything(seed: int) -> None:
    """Python, NumPy and the framework. Batches are drawn in-process (no loader workers to seed)."""
    random.seed(seed)
    np.random.seed(seed)
    if hasattr(model, "seed"):
        model.seed(seed)


def train(prepared: Path, models: Path | None, config: dict[str, Any],
          process: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Fit the model on the training part; write it and models/training.json; return the per-epoch
    history (empty for a model without epochs).

    process: this process's place among those torchrun started (rank, world_size, backend, nnodes,
    nproc_per_node; workflow/scripts/train_rank.py); None for one process. Only the process given
    `models` (rank 0) writes anything.
    """
    process = process or contract.SINGLE
    contract.check(model)
    contract.check_distributed(model, process)
    provenance.check_lock()  # fail before training, not after hours of it
    seed = config["seed"]
    seed_everything(contract.rank_seed(seed, process["rank"]))
    x, y = data.load_split(prepared, "train")
    fitted, history = model.fit(x, y, len(data.classes(prepared)), contract.params(model, config),
                                seed, config["train"])
    if models is None:
        return list(history)
    if models.exists():
        shutil.rmtree(models)
    models.mkdir(parents=True)
    model.save(fitted, models / model.FILENAME)
    runtime = contract.runtime(model, config["train"])
    # Data order comes from its own generator seeded with the same value; batches are drawn
    # in-process, so there are no loader workers to seed. These are rank 0's; every rank's are in
    # distributed.rank_seeds.
    runtime["seeds"] = {"python": seed, "numpy": seed, "framework": seed, "data_order": seed}
    runtime["distributed"] = contract.distributed_record(process, seed)
    (models / "training.json").write_text(json.dumps(runtime, indent=2, sort_keys=True) + "\n")
    return list(history)
