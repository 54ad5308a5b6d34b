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
