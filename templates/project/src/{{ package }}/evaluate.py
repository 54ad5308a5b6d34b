"""Evaluation: score the saved model on the held-out split.

Accuracy and macro F1 come from the model's own predict(); log_loss only from a model with
predict_proba (a model whose probabilities are calibrated apart from its decisions is scored on
its decisions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Every metric evaluate() can write; verify's tolerances may name any of them.
METRICS = ("accuracy", "f1_macro", "log_loss", "n_test")


def evaluate(models: Path, prepared: Path) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from . import contract, data, model

    contract.check(model)
    x, y = data.load_split(prepared, "test")
    fitted = model.load(models / model.FILENAME)
    predicted = np.asarray(model.predict(fitted, x))
    metrics = {
        "accuracy": float(accuracy_score(y, predicted)),
        "f1_macro": float(f1_score(y, predicted, average="macro")),
        "n_test": len(y),
    }
    proba = contract.probabilities(model, fitted, x)
    if proba is not None:
        labels = list(range(len(data.classes(prepared))))
        metrics["log_loss"] = float(log_loss(y, proba, labels=labels))
    return metrics
