"""The baseline of bench/pipeline_cost.py: the default project's work as one hand-written script.

What a researcher would write without the pipeline: the same data (scikit-learn's digits as
float32), the same stratified split (test_size 0.25, seed 42), the same MLP (standardised input,
two hidden layers of 128), the same training (Adam, lr 1e-3, batch 64, 30 epochs, one thread,
seeded, deterministic), the same evaluation (accuracy, macro F1, log loss, n_test) and the same
MLflow record: params, per-epoch loss and accuracy, final metrics and the model
(mlflow.pytorch.log_model with pip_requirements and an input example), in a local SQLite store.
Its metrics equal the pipeline's bit for bit (the bench checks), so both did the same work.

Usage: python bench/handwritten.py STORE_DIR [--timings FILE]   (FILE: JSON of its phases)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

STARTED = time.perf_counter()

import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_loop import per_batch_epochs  # noqa: E402 (bench/ is on sys.path: run as a script)
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, log_loss  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402

SEED = 42
PARAMS = {"epochs": 30, "batch_size": 64, "learning_rate": 1e-3, "hidden_units": 128}


class MLP(nn.Module):
    def __init__(self, n_features: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--timings", type=Path)
    args = parser.parse_args()
    phases = {"imports": time.perf_counter() - STARTED}

    mark = time.perf_counter()
    digits = load_digits()
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED,
                                                        shuffle=True, stratify=y)
    phases["data"] = time.perf_counter() - mark

    mark = time.perf_counter()
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model = MLP(x.shape[1], 10, PARAMS["hidden_units"])
    features, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    model.mean.copy_(features.mean(0))
    model.std.copy_(torch.where(features.std(0) > 0, features.std(0), torch.ones(x.shape[1])))
    history = per_batch_epochs(model, features, labels, PARAMS, SEED)
    model.eval()
    phases["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    with torch.no_grad():
        proba = torch.softmax(model(torch.from_numpy(x_test)), dim=1).numpy()
    predicted = proba.argmax(1)
    metrics = {"accuracy": float(accuracy_score(y_test, predicted)),
               "f1_macro": float(f1_score(y_test, predicted, average="macro")),
               "log_loss": float(log_loss(y_test, proba, labels=list(range(10)))),
               "n_test": len(y_test)}
    phases["evaluate"] = time.perf_counter() - mark

    mark = time.perf_counter()
    args.store.mkdir(parents=True, exist_ok=True)
    scratch = args.store / "model.pt"
    torch.save(model.state_dict(), scratch)
    phases["torch_save"] = time.perf_counter() - mark

    mark = time.perf_counter()
    mlflow.set_tracking_uri(f"sqlite:///{(args.store / 'mlruns.db').resolve()}")
    name = "handwritten"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(args.store / "mlartifacts").resolve().as_uri())
    mlflow.set_experiment(name)
    with mlflow.start_run():
        mlflow.log_params({"seed": SEED, **{f"model.{k}": v for k, v in PARAMS.items()},
                           "prepare.test_size": 0.25, "prepare.stratify": True})
        for row in history:
            mlflow.log_metrics({"epoch_loss": row["loss"], "epoch_accuracy": row["accuracy"]},
                               step=row["epoch"])
        mlflow.log_metrics(metrics)
        started = time.perf_counter()
        mlflow.pytorch.log_model(model, name="model", input_example=x_test[:2],
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                   f"numpy=={np.__version__}",
                                                   f"mlflow=={mlflow.__version__}"])
        phases["log_model"] = time.perf_counter() - started
    phases["mlflow"] = time.perf_counter() - mark
    phases["total_in_process"] = time.perf_counter() - STARTED
    print(json.dumps(metrics))
    if args.timings:
        args.timings.write_text(json.dumps({"phases": phases, "metrics": metrics}, indent=2) + "\n")


if __name__ == "__main__":
    main()
