"""Evaluation: score the saved model on the held-out split."""

from __future__ import annotations

from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score, log_loss

from . import data, model


def evaluate(models: Path, prepared: Path) -> dict[str, float]:
    x, y = data.load_split(prepared, "test")
    proba = model.predict_proba(model.load(models / model.FILENAME), x)
    predicted = proba.argmax(1)
    labels = list(range(len(data.classes(prepared))))
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "f1_macro": float(f1_score(y, predicted, average="macro")),
        "log_loss": float(log_loss(y, proba, labels=labels)),
        "n_test": int(len(y)),
    }
