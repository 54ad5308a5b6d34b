"""Copy one MLflow run between stores through a folder, so a run made on a node outlives the node.

    python workflow/scripts/run_copy.py export   # on the node: results/run.json's run -> EXPORT
    python workflow/scripts/run_copy.py import   # here: EXPORT -> the store config/config.yaml names

Everything the track step records travels: the run's name, times and status, params, tags, every
metric's full history (value, timestamp, step, linked model), the dataset inputs with their
digests, the run's artifacts, and each logged model (MLflow 3 keeps a model as its own entity with
its own artifacts, params and tags). MLflow cannot keep a run id across stores: the copy gets a
new id and the tags `reprostack.copied_from.*` naming the original; importing twice finds that
copy instead of making a second one.

MLflow's own client API does the work. The maintained alternative, mlflow-export-import (1.2.0),
predates MLflow 3's logged models and needs pytest at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from _step import ROOT, project, write_json

EXPORT = Path("results") / "mlflow-export"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per folder buries the lines
COPIED_FROM = "reprostack.copied_from"


def _client(config: dict[str, Any], tracking: Any) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    tracking.bound_http(config["tracking"])
    tracking.relocate_store(ROOT, config["tracking"])
    uri = tracking.tracking_uri(ROOT, config["tracking"])
    return MlflowClient(uri), uri


def export_run(root: Path = ROOT) -> dict[str, Any]:
    """Write results/run.json's run, its artifacts and its models under EXPORT."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    config, tracking = project("tracking")
    client, uri = _client(config, tracking)
    run_id = json.loads((root / "results" / "run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    folder = root / EXPORT
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "artifacts").mkdir(parents=True)
    client.download_artifacts(run_id, "", str(folder / "artifacts"))
    metrics = [
        {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step,
         "model_id": m.model_id, "dataset_name": m.dataset_name, "dataset_digest": m.dataset_digest}
        for key in sorted(run.data.metrics)
        for m in client.get_metric_history(run_id, key)
    ]
    models = []
    outputs = getattr(run, "outputs", None)
    for index, output in enumerate(getattr(outputs, "model_outputs", None) or []):
        model = client.get_logged_model(output.model_id)
        target = folder / "models" / str(index)
        target.mkdir(parents=True)
        get_artifact_repository(model.artifact_location, tracking_uri=uri).download_artifacts("", str(target))
        models.append({"model_id": model.model_id, "name": model.name, "model_type": model.model_type,
                       "params": dict(model.params or {}), "tags": dict(model.tags or {}),
                       "step": output.step, "folder": f"models/{index}"})
    inputs = [
        {"dataset": {"name": d.dataset.name, "digest": d.dataset.digest, "source_type": d.dataset.source_type,
                     "source": d.dataset.source, "schema": d.dataset.schema, "profile": d.dataset.profile},
         "tags": {t.key: t.value for t in d.tags}}
        for d in (run.inputs.dataset_inputs if run.inputs else [])
    ]
    record = {
        "run_id": run_id, "experiment": config["tracking"]["experiment"], "run_name": run.info.run_name,
        "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
        "params": dict(run.data.params), "tags": dict(run.data.tags), "metrics": metrics,
        "inputs": inputs, "models": models, "host": socket.gethostname(),
        "tracking_uri": tracking.redact(config["tracking"]["server_uri"] if config["tracking"]["mode"]
                                        == "server" else config["tracking"]["uri"]),
    }
    (folder / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"run_copy: exported MLflow run {run_id} ({len(metrics)} metric values, {len(models)} model(s)) "
          f"to {EXPORT}")
    return record


def find_copy(client: Any, experiment_id: str, source_run_id: str) -> str | None:
    """The id of a finished copy of source_run_id in this store, if one was made before."""
    match = f"tags.`{COPIED_FROM}.run_id` = '{source_run_id}' and tags.`{COPIED_FROM}.complete` = 'true'"
    found = client.search_runs([experiment_id], filter_string=match, max_results=1)
    return found[0].info.run_id if found else None


def import_run(root: Path = ROOT, folder: Path | None = None) -> dict[str, Any]:
    """Recreate the exported run in this project's store; returns its new ids (results/run.json's shape)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag

    config, tracking = project("tracking")
    folder = folder or root / EXPORT
    record = json.loads((folder / "run.json").read_text())
    client, _ = _client(config, tracking)
    experiment_id = tracking._experiment(client, root, config)
    ids = {"experiment_id": experiment_id, "experiment": config["tracking"]["experiment"],
           "tracking_uri": tracking._configured_uri(config["tracking"]),
           "copied_from": {"run_id": record["run_id"], "tracking_uri": record["tracking_uri"],
                           "host": record["host"]}}
    existing = find_copy(client, experiment_id, record["run_id"])
    if existing:
        print(f"run_copy: MLflow run {record['run_id']} was already copied here as run {existing}")
        return {"run_id": existing, **ids}
    origin = {f"{COPIED_FROM}.run_id": record["run_id"], f"{COPIED_FROM}.host": record["host"],
              f"{COPIED_FROM}.tracking_uri": record["tracking_uri"]}
    run = client.create_run(experiment_id, start_time=record["start_time"], run_name=record["run_name"],
                            tags={**record["tags"], **origin})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(record["params"].items())])
        new_model = {}
        for model in record["models"]:
            made = client.create_logged_model(experiment_id, name=model["name"], source_run_id=run_id,
                                              tags=model["tags"], params=model["params"],
                                              model_type=model["model_type"])
            client.log_model_artifacts(made.model_id, str(folder / model["folder"]))
            client.finalize_logged_model(made.model_id, "READY")
            new_model[model["model_id"]] = made.model_id
        if record["models"]:
            client.log_outputs(run_id, [LoggedModelOutput(new_model[m["model_id"]], m["step"])
                                        for m in record["models"]])
        client.log_batch(run_id, metrics=[
            Metric(m["key"], m["value"], m["timestamp"], m["step"], model_id=new_model.get(m["model_id"]),
                   dataset_name=m["dataset_name"], dataset_digest=m["dataset_digest"])
            for m in record["metrics"]
        ])
        if record["inputs"]:
            client.log_inputs(run_id, datasets=[
                DatasetInput(Dataset(**d["dataset"]), [InputTag(k, v) for k, v in d["tags"].items()])
                for d in record["inputs"]
            ])
        artifacts = folder / "artifacts"
        if any(artifacts.iterdir()):
            client.log_artifacts(run_id, str(artifacts))
        client.log_batch(run_id, tags=[RunTag(f"{COPIED_FROM}.complete", "true")])
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    except BaseException as error:
        # Half a copy is not kept: deleted runs are invisible to find_copy, so the next import redoes it.
        with contextlib.suppress(Exception):  # the store is the problem: the half copy stays unmarked
            client.delete_run(run_id)
        what, todo = tracking.describe_failure(error, config["tracking"])
        raise tracking.TrackingError(
            f"run_copy: copying MLflow run {record['run_id']} into {tracking._where(config['tracking'])} "
            f"failed: it {what}; nothing of it is kept there; {todo}.") from None
    print(f"run_copy: MLflow run {record['run_id']} from {record['host']} is now run {run_id} in "
          f"{tracking._where(config['tracking'])} ({len(record['metrics'])} metric values, "
          f"{len(record['models'])} model(s))")
    return {"run_id": run_id, **ids}


def main(argv: list[str]) -> int:
    if argv[:1] == ["export"]:
        export_run()
    elif argv[:1] == ["import"]:
        write_json("results/run.json", import_run())
    else:
        raise SystemExit("run_copy: accepted actions: export, import")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
