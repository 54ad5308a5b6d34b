"""evaluate.py computes scikit-learn's metrics in NumPy (importing scikit-learn costs the evaluate
step a second): the values must be scikit-learn's to the last bit, or a rerun could not match a
reference scored with either."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))

import _step  # noqa: E402

evaluate = importlib.import_module(f"{_step.load_config()['project']['package']}.evaluate")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_metrics_are_scikit_learns(dtype: type) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(300):
        rows, classes = int(rng.integers(1, 400)), int(rng.integers(2, 12))
        y = rng.integers(0, classes, rows)
        logits = rng.normal(0, rng.uniform(0.1, 8), (rows, classes))
        proba = np.exp(logits - logits.max(1, keepdims=True))
        proba = (proba / proba.sum(1, keepdims=True)).astype(dtype)
        if trial % 5 == 0:  # certain predictions: clipped to [eps, 1 - eps]
            proba = np.eye(classes, dtype=dtype)[rng.integers(0, classes, rows)]
        predicted = proba.argmax(1) if trial % 3 else rng.integers(0, classes, rows)
        assert evaluate.accuracy(y, predicted) == metrics.accuracy_score(y, predicted)
        assert evaluate.f1_macro(y, predicted) == metrics.f1_score(y, predicted, average="macro",
                                                                   zero_division=0)
        assert evaluate.log_loss(y, proba, classes) == metrics.log_loss(y, proba,
                                                                       labels=list(range(classes)))


def test_scores_that_are_not_probabilities_are_refused() -> None:
    """scikit-learn raises on values outside [0, 1] and warns on rows not summing to 1; a model
    whose predict_proba returns scores must not get a silently clipped log loss."""
    y = np.array([0, 1])
    with pytest.raises(ValueError, match=r"values in \[-0.5, 1.5\]; expected probabilities in \[0, 1\]"):
        evaluate.log_loss(y, np.array([[1.5, -0.5], [0.2, 0.8]]), 2)
    with pytest.raises(ValueError, match="rows summing to 0.6; expected rows summing to 1"):
        evaluate.log_loss(y, np.array([[0.5, 0.5], [0.3, 0.3]]), 2)
