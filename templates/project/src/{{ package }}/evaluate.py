"""Evaluation: score the saved model on the held-out split.

Accuracy and macro F1 come from the model's own predict(); log_loss only from a model with
predict_proba (a model whose probabilities are calibrated apart from its decisions is scored on
its decisions). The three are scikit-learn's accuracy_score, f1_score(average="macro") and
log_loss, computed the same way in NumPy, to the last bit: importing scikit-learn (with SciPy and
pandas) would cost this step a second for three formulas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Every metric evaluate() can write; verify's tolerances may name any of them.
METRICS = ("accuracy", "f1_macro", "log_loss", "n_test")


def evaluate(models: Path, prepared: Path) -> dict[str, float]:
    from . import contract, data, model

    contract.check(model)
    x, y = data.load_split(prepared, "test")
    fitted = model.load(models / model.FILENAME)
    predicted = np.asarray(model.predict(fitted, x))
    metrics = {
        "accuracy": accuracy(y, predicted),
        "f1_macro": f1_macro(y, predicted),
        "n_test": len(y),
    }
    proba = contract.probabilities(model, fitted, x)
    if proba is not None:
        metrics["log_loss"] = log_loss(y, proba, len(data.classes(prepared)))
    return metrics


def accuracy(y: np.ndarray, predicted: np.ndarray) -> float:
    """The fraction of rows predicted right."""
    return float(np.mean(np.asarray(y) == np.asarray(predicted)))


def f1_macro(y: np.ndarray, predicted: np.ndarray) -> float:
    """The unweighted mean, over the classes found in y or predicted, of each class's F1:
    2 tp / (2 tp + fp + fn), that is 2 tp / (rows of the class + rows predicted as it)."""
    y, predicted = np.asarray(y), np.asarray(predicted)
    labels = np.union1d(y, predicted)
    truth, guess = np.searchsorted(labels, y), np.searchsorted(labels, predicted)
    size = len(labels)
    true = np.bincount(truth, minlength=size).astype(np.float64)
    pred = np.bincount(guess, minlength=size).astype(np.float64)
    hits = np.bincount(truth[truth == guess], minlength=size).astype(np.float64)
    return float(np.mean(2.0 * hits / (1.0 * true + pred)))


def log_loss(y: np.ndarray, proba: np.ndarray, n_classes: int) -> float:
    """The mean negative log of the probability given to the true class, the probabilities
    clipped to [eps, 1 - eps] of their float type."""
    proba = np.asarray(proba)
    if not np.issubdtype(proba.dtype, np.floating):
        proba = proba.astype(np.float64)
    if proba.ndim != 2 or proba.shape[1] != n_classes:
        raise ValueError(f"predict_proba gave shape {proba.shape}; expected (rows, {n_classes})")
    # scikit-learn's checks, as one line each: scores are not probabilities.
    if proba.size and (proba.min() < 0 or proba.max() > 1):
        raise ValueError(f"predict_proba gave values in [{proba.min():g}, {proba.max():g}]; "
                         "expected probabilities in [0, 1]")
    sums = proba.sum(axis=1)
    if not np.allclose(sums, 1, rtol=np.sqrt(np.finfo(proba.dtype).eps)):
        worst = float(sums[np.argmax(np.abs(sums - 1))])
        raise ValueError(f"predict_proba gave rows summing to {worst:g}; expected rows summing to 1")
    eps = np.finfo(proba.dtype).eps
    clipped = np.clip(proba, eps, 1 - eps)
    truth = np.zeros_like(clipped)
    truth[np.arange(len(y)), np.asarray(y)] = 1
    return float(np.mean(-np.sum(truth * np.log(clipped), axis=1)))
