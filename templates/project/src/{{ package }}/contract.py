"""The contract between the model (model.py) and the pipeline: what a model provides, and how the
train, evaluate and track steps use it. Replacing the model is a change to model.py alone, plus
the settings it declares in the config's model: section.

model.py provides (see the shipped one, and "Bring your own model" in README.md):

    FRAMEWORK = "sklearn"            literal: the framework; config train.framework must match
    CONFIG_SCHEMA = {...}            literal: JSON schema of the config's model: section; every
                                     property may give a "default". The config check refuses
                                     other keys, in one line, without importing model.py.
    FILENAME = "model.joblib"        the file save() writes under models/
    fit(x, y, n_classes, params, seed, train) -> (fitted, history)
                                     x float32 (rows, features), y int64 labels 0..n_classes-1;
                                     params: the model: section with defaults filled in; seed: the
                                     config's seed; train: the train: section (framework, device...).
                                     history: one dict per epoch, {"epoch": 1, "loss": ...,
                                     "accuracy": ...}, or [] for a model without epochs.
    predict(fitted, x) -> labels     int array; accuracy and f1 are computed from it
    save(fitted, path) / load(path) -> fitted

and may provide:

    predict_proba(fitted, x)         (rows, n_classes) probabilities; log_loss only when present
    seed(value)                      seed the framework's global state (Python's and NumPy's are
                                     seeded for every model)
    DISTRIBUTED = True               literal: fit() trains under torch.distributed (DDP). With
                                     train.distributed asking for more than one process, torchrun
                                     starts one process per rank (workflow/scripts/launch.py, never
                                     the model) and initialises the process group before fit(); fit()
                                     then wraps its network in DistributedDataParallel and trains on
                                     its rank's shard of every epoch's order: all ranks draw the same
                                     order from `seed`; rank r takes entries r, r+W, ... (W the world
                                     size, torch.distributed.get_world_size()). Every rank returns
                                     the same fitted model; rank 0 alone saves it. Without this name
                                     the config check refuses train.distributed, naming it.
    runtime(train) -> dict           facts about how fit() computed (device, device_name,
                                     precision, versions), for models/training.json and the tags
    log_to_mlflow(fitted, pip_requirements, example)
                                     log the model with an MLflow flavor; without it the files
                                     save() wrote are the run's model/ artifacts
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REQUIRED = ("FRAMEWORK", "CONFIG_SCHEMA", "FILENAME", "fit", "predict", "save", "load")
# training.json and the run's tags name these for every model; runtime() may say better.
RUNTIME_DEFAULTS = {"device": "cpu", "device_name": "cpu", "precision": "default"}


class ContractError(SystemExit):
    """model.py lacks a name the pipeline needs: one line naming it."""


def check(model: ModuleType) -> ModuleType:
    missing = [name for name in REQUIRED if not hasattr(model, name)]
    if missing:
        raise ContractError(f"{model.__file__}: model.py must define {', '.join(missing)} "
                            f"(see {Path(__file__).name} for the contract)")
    return model


# One training process: what a run without train.distributed records.
SINGLE = {"rank": 0, "world_size": 1, "backend": "none", "nnodes": 1, "nproc_per_node": 1}


def check_distributed(model: ModuleType, process: dict[str, Any]) -> None:
    """More than one process needs a model that declares DISTRIBUTED = True (the config check
    refuses it first; this guards a model.py edited since)."""
    if process["world_size"] > 1 and getattr(model, "DISTRIBUTED", False) is not True:
        raise ContractError(f"{model.__file__}: train.distributed asks for {process['world_size']} "
                            "processes, but model.py does not declare DISTRIBUTED = True (its fit() "
                            f"must train its rank's shard under DDP; see {Path(__file__).name})")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of Python, NumPy and the framework in process `rank`: seed + rank, so random layers
    (dropout) differ across ranks. The weights still start as rank 0's (DDP broadcasts them) and
    the data order is drawn from `seed` on every rank; one process is seeded with `seed` itself."""
    return seed + rank


def distributed_record(process: dict[str, Any], seed: int) -> dict[str, Any]:
    """How the processes trained together, for models/training.json and the run's tags."""
    world = int(process["world_size"])
    return {**{key: process[key] for key in ("world_size", "backend", "nnodes", "nproc_per_node")},
            "rank_seeds": [rank_seed(seed, rank) for rank in range(world)],
            "data_order_seed": seed,
            "data_shard": "rank r of W: entries r, r+W, r+2W, ... of each epoch's order (padded to "
                          "a multiple of W with its first entries)" if world > 1 else "all"}


def defaults(model: ModuleType) -> dict[str, Any]:
    return {key: rule["default"] for key, rule in model.CONFIG_SCHEMA.get("properties", {}).items()
            if isinstance(rule, dict) and "default" in rule}


def params(model: ModuleType, config: dict[str, Any]) -> dict[str, Any]:
    """The model: section as fit() gets it and MLflow records it: the schema's defaults filled in."""
    return {**defaults(model), **(config.get("model") or {})}


def runtime(model: ModuleType, train: dict[str, Any]) -> dict[str, Any]:
    own = model.runtime(train) if hasattr(model, "runtime") else {}
    return {"framework": model.FRAMEWORK, **RUNTIME_DEFAULTS, **own}


def probabilities(model: ModuleType, fitted: Any, x: np.ndarray) -> np.ndarray | None:
    """predict_proba's answer, or None for a model without probabilities."""
    if not hasattr(model, "predict_proba"):
        return None
    return np.asarray(model.predict_proba(fitted, x))
