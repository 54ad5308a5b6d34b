"""The MLflow record of a pipeline run: params, per-epoch metrics, the model and full provenance.

`tracking.mode: local` (the default) needs no server: a SQLite store and an artifact folder in the
project, both gitignored. `server` points the client at an MLflow server by URI.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from . import model, provenance

SECRET_KEYS = ("password", "secret", "token", "key")


def tracking_uri(root: Path, tracking: dict[str, Any]) -> str:
    """The URI for the mode; a relative sqlite path is resolved against the project root."""
    if tracking["mode"] == "server":
        return tracking["server_uri"]
    uri = tracking["uri"]
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str((root / uri[len(prefix):]).resolve())
    return uri


def relocate_store(root: Path, tracking: dict[str, Any]) -> None:
    """Keep the local store inside a moved or copied project.

    MLflow writes absolute artifact paths into its store (experiments, runs, logged models) and
    has no relative form; after the project moved, those paths would still name the old folder,
    and new artifacts would be written there. Rewrite the old root to the current one, in place.
    """
    if tracking["mode"] != "local" or not tracking["uri"].startswith("sqlite:///"):
        return
    database = Path(tracking_uri(root, tracking)[len("sqlite:///"):])
    if not database.exists():
        return
    import sqlite3

    artifacts = (root / tracking.get("artifacts", "mlartifacts")).resolve()
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT artifact_location FROM experiments WHERE name = ?",
                         (tracking["experiment"],)).fetchone()
        if row is None or not row[0]:
            return
        old = Path(row[0].removeprefix("file://"))
        if old.name != artifacts.name or old.parent == artifacts.parent:
            return
        before, after = str(old.parent), str(artifacts.parent)
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [c[1] for c in db.execute(f"PRAGMA table_info('{table}')") if "artifact" in c[1]]
            for column in columns:
                for prefix in (before, f"file://{before}"):
                    new_prefix = prefix.replace(before, after, 1)
                    db.execute(
                        f"UPDATE '{table}' SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (new_prefix, len(prefix) + 1, len(prefix) + 1, prefix + "/"),
                    )


def redact(uri: str) -> str:
    """A URI without its password, for anything that is logged or recorded."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def preflight(tracking: dict[str, Any]) -> None:
    """With a tracking server, fail before any training if it is down or refuses the credentials."""
    if tracking["mode"] != "server":
        return
    import base64
    import os
    import urllib.error
    import urllib.request

    base = tracking["server_uri"].rstrip("/")
    advice = ("start it (python workflow/scripts/stack.py up, or docker compose -f docker/compose.yaml "
              "up -d) or set tracking.mode: local")  # noqa: E501
    try:
        urllib.request.urlopen(f"{base}/health", timeout=5).close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SystemExit(f"tracking: the MLflow server at {redact(base)} is unreachable ({reason}); "
                         f"{advice}. Nothing was trained.") from None
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        token = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise SystemExit(
                f"tracking: the MLflow server at {redact(base)} rejected the credentials of user "
                f"'{user or ''}' (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in .env). "
                "Nothing was trained."
            ) from None
        raise


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif not any(word in key.lower() for word in SECRET_KEYS):
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def _experiment(client: Any, root: Path, config: dict[str, Any]) -> str:
    """The experiment's id, created on first use. Two first runs at once race to create it: the
    loser gets RESOURCE_ALREADY_EXISTS and takes the winner's."""
    from mlflow.exceptions import MlflowException

    tracking = config["tracking"]
    found = client.get_experiment_by_name(tracking["experiment"])
    if found is not None:
        return found.experiment_id
    location = None
    if tracking["mode"] == "local":
        location = (root / tracking.get("artifacts", "mlartifacts")).resolve().as_uri()
    try:
        return client.create_experiment(tracking["experiment"], artifact_location=location)
    except MlflowException as error:
        found = client.get_experiment_by_name(tracking["experiment"])
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        return found.experiment_id


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _datasets(root: Path, data_record: dict[str, Any]) -> list[tuple[Any, str]]:
    """The raw data and the two splits as MLflow datasets, each with its content digest."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    pin = {k: str(v) for k, v in data_record["pin"].items()}
    source = CodeDatasetSource({"source": data_record["source"], **pin})
    # MLflow stores digests of at most 36 characters; the full sha256 values are tags and artifacts.
    out = [(MetaDataset(source, name="raw", digest=data_record["sha256"][:32]), "raw")]
    prepared = root / "data" / "prepared"
    for part in ("train", "test"):
        digest = hashlib.sha256()
        for name in (f"x_{part}.npy", f"y_{part}.npy"):
            digest.update((prepared / name).read_bytes())
        out.append((MetaDataset(source, name=part, digest=digest.hexdigest()[:32]), part))
    return out


def record_run(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Log one run and return its ids (written to results/run.json)."""
    preflight(config["tracking"])  # a clear error now, not MLflow's minutes of retries
    started = time.perf_counter()
    git = provenance.git_state(root)
    launcher = provenance.front_end()
    versions = provenance.tool_versions()
    frozen = provenance.freeze()
    provenance_seconds = time.perf_counter() - started

    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    results = root / "results"
    environment = _read(results / "environment.json")
    data_record = _read(results / "data.json")
    metrics = _read(results / "metrics.json")
    history = _read(results / "history.json")
    training = _read(root / "models" / "training.json")
    image = _read(results / "image.json")

    tracking = config["tracking"]
    relocate_store(root, tracking)
    uri = tracking_uri(root, tracking)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = _experiment(client, root, config)
    gpu_names = ", ".join(g["name"] for g in environment["gpus"]) or "none"
    tags = {
        "mlflow.source.git.commit": git["commit"] or "",
        "mlflow.source.name": launcher["front_end"],
        "mlflow.source.type": "PROJECT",
        "git.commit": git["commit"] or "",
        "git.branch": git["branch"] or "",
        "git.dirty": str(git["dirty"]).lower(),
        "seed": str(config["seed"]),
        "front_end": launcher["front_end"],
        "command_line": launcher["command_line"],
        "data.source": data_record["source"],
        "data.sha256": data_record["sha256"],
        "environment.host": environment["recorded"]["host"],
        "environment.workdir": environment["recorded"]["workdir"],
        "environment.recorded_at": environment["recorded"]["at"],
        "hardware.cpu": environment["cpu"]["model"],
        "hardware.gpu": gpu_names,
        "hardware.os": environment["os"]["name"],
        "python.version": environment["python"]["version"],
        "train.device": training["device"],
        "train.device_name": training["device_name"],
        "train.precision": training["precision"],
        "train.deterministic_algorithms": str(training.get("deterministic_algorithms", "n/a")),
        "train.cublas_workspace_config": str(training.get("cublas_workspace_config", "n/a")),
        "lock.sha256": environment["lock_sha256"] or "",
        "image.status": image["status"],
        "image.base": image.get("base_image") or "",
        "image.id": image.get("id", ""),
        "image.repo_digests": ",".join(image.get("repo_digests", [])),
        "provenance.seconds": f"{provenance_seconds:.3f}",
        **{f"version.{name}": version for name, version in versions.items()},
    }
    params = flatten({k: v for k, v in config.items() if k != "tracking"})
    params["tracking.mode"] = config["tracking"]["mode"]
    now = int(time.time() * 1000)
    series = [
        Metric(f"epoch_{key}", float(row[key]), now, int(row["epoch"]))
        for row in history
        for key in row
        if key != "epoch"
    ]
    final = [Metric(key, float(value), now, 0) for key, value in metrics.items()]

    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"{launcher['front_end']}-{(git['commit'] or 'nogit')[:8]}",
        tags=tags,
    ) as run:
        run_id = run.info.run_id
        items = [Param(k, v) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=items[start : start + 100])
        for start in range(0, len(series + final), 900):
            client.log_batch(run_id, metrics=(series + final)[start : start + 900])
        for dataset, context in _datasets(root, data_record):
            mlflow.log_input(dataset, context=context)
        mlflow.log_text(git["diff"], "provenance/git.diff")
        mlflow.log_text(frozen, "provenance/pip-freeze.txt")
        mlflow.log_dict(
            {**{k: v for k, v in git.items() if k != "diff"}, **launcher, "versions": versions},
            "provenance/run.json",
        )
        for path in (
            results / "environment.json",
            results / "data.json",
            results / "image.json",
            results / "metrics.json",
            results / "history.json",
            root / "models" / "training.json",
            root / "config" / "config.yaml",
            root / "requirements.lock",
        ):
            mlflow.log_artifact(str(path), artifact_path="provenance")
        requirements = [f"{n}=={v}" for n, v in sorted(provenance.pins(root).items())
                        if n in ("torch", "scikit-learn", "numpy", "mlflow")]
        example = np.load(root / "data" / "prepared" / "x_test.npy")[:2]
        model.log_to_mlflow(model.load(root / "models" / model.FILENAME), requirements, example)
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "experiment": config["tracking"]["experiment"],
        "tracking_uri": redact(tracking["server_uri"] if tracking["mode"] == "server" else tracking["uri"]),
    }


def link_report(root: Path, config: dict[str, Any], result: dict[str, Any]) -> None:
    """Attach the reproduction report to this run's MLflow record (when the run is in this store)."""
    run_file = root / "results" / "run.json"
    if not run_file.exists():
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = _read(run_file)["run_id"]
    relocate_store(root, config["tracking"])
    client = MlflowClient(tracking_uri(root, config["tracking"]))
    try:
        client.get_run(run_id)
    except MlflowException:
        # A fresh clone reuses the committed results: their run lives in the author's store.
        print(f"verify: MLflow run {run_id} is not in this store; the report stays in results/")
        return
    for name in ("report.md", "curves.png", "verify.json"):
        client.log_artifact(run_id, str(root / "results" / name), artifact_path="reproduction")
    client.set_tag(run_id, "verify.status", result["status"])
    client.set_tag(run_id, "reproduction.report", "reproduction/report.md")
