"""The MLflow record of a pipeline run: params, per-epoch metrics, the model and full provenance.

`tracking.mode: local` (the default) needs no server: a SQLite store and an artifact folder in the
project, both gitignored. `server` points the client at an MLflow server by URI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

# model.py (and its framework, torch: a second to import) is imported where the model is used,
# not here: verify reads run_params from this module without touching the model.
from . import contract, data, provenance

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


# How long the MLflow client waits for a server before it gives up (tracking.timeout_s, .retries,
# .backoff_s; the schema documents them). MLflow's own defaults, 120 s per request and 7 retries
# with backoff, hang a step for 4 to 8 minutes when the server dies.
HTTP_DEFAULTS = {"timeout_s": 30, "retries": 3, "backoff_s": 1}
JITTER_S = 0.5  # random extra wait per retry, so clients that lost a server do not return in step
PENDING = Path("results") / "track-pending.json"
RESTART_ADVICE = ("python workflow/scripts/stack.py down, then up; or docker compose --env-file .env "
                  "-f docker/compose.yaml up -d")


class TrackingError(SystemExit):
    """Recording failed: exits non-zero with one line naming the server, what failed and what to do."""


def bound_http(tracking: dict[str, Any]) -> dict[str, int]:
    """Bound every MLflow request of this process by the config's timeout and retries.

    MLflow reads these variables at each request (mlflow.utils.rest_utils.http_request), not at
    import, so setting them here covers all later calls. The config wins over the environment.
    A server's Retry-After header is ignored: it could stretch a wait past any bound.
    """
    settings = {key: int(tracking.get(key, default)) for key, default in HTTP_DEFAULTS.items()}
    os.environ.update({
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(settings["timeout_s"]),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(settings["retries"]),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(settings["backoff_s"]),
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": str(JITTER_S),
        "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER": "false",
        # Printing the run's URL at its end costs a request (and a retry cycle on a dead server);
        # record_run prints it itself.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    })
    # start_run asks whether a Databricks job wants its run resumed, importing IPython to find
    # out (up to a second); these runs never start on Databricks. Set to true there to keep it.
    os.environ.setdefault("MLFLOW_ENABLE_SGC_RUN_RESUMPTION_FOR_DATABRICKS_JOBS", "false")
    import logging

    # urllib3 logs a warning per retry ("Retrying (Retry(total=2, ...))"): the failure is reported
    # once, in one line, instead.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    return settings


def describe_failure(error: BaseException, tracking: dict[str, Any]) -> tuple[str, str]:
    """What went wrong, in words, and what to do: from MLflow's exception and the requests/urllib3
    errors chained under it (MLflow wraps them in a message of its own)."""
    import re

    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and seen not in chain and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " | ".join(f"{type(e).__name__}: {e}" for e in chain)
    settings = {key: int(tracking.get(key, default)) for key, default in HTTP_DEFAULTS.items()}
    tries = f"{settings['retries'] + 1} tries"
    url = (re.search(r"API request to (?:endpoint )?(\S+?) failed", text)
           or re.search(r"url: (\S+?) \(", text))
    endpoint = ""
    if url:
        endpoint = urlsplit(url.group(1)).path if "://" in url.group(1) else url.group(1)
        endpoint = f" at {endpoint.split('?')[0]}"
    status = re.search(r"too many (\d{3}) error responses", text)
    check = ("check the server (python workflow/scripts/stack.py status, or docker compose "
             "-f docker/compose.yaml --env-file .env ps and logs)") if tracking["mode"] == "server" else (
             f"check the local store (tracking.uri: {tracking['uri']})")
    if status and status.group(1) == "503":
        return (f"answered 503 Service Unavailable{endpoint} ({tries}): its database (PostgreSQL in "
                "the service stack) is down or unreachable",
                f"bring the database back ({RESTART_ADVICE}), then rerun")
    if status:
        return (f"answered HTTP {status.group(1)}{endpoint} ({tries})", f"{check}, then rerun")
    if re.search(r"Timeout|timed out", text):
        return (f"did not answer within tracking.timeout_s = {settings['timeout_s']} s{endpoint} "
                f"({tries})", f"{check}, then rerun; raise tracking.timeout_s if it is only slow")
    if re.search(r"Connection refused|NewConnectionError|Failed to establish", text):
        return (f"refused connections{endpoint} ({tries}): it is down",
                f"restart it ({RESTART_ADVICE}), then rerun")
    if re.search(r"ConnectionError|RemoteDisconnected|Connection aborted|ProtocolError|"
                 r"Connection reset|BrokenPipe", text):
        return (f"dropped the connection{endpoint} ({tries})", f"{check}, then rerun")
    if re.search(r"error code (401|403)\b|UNAUTHENTICATED|PERMISSION_DENIED", text):
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        return (f"rejected the credentials of user '{user}'", "fix MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD in .env, then rerun")
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return (f"did not take the record ({type(error).__name__}: {first.strip()[:300]})",
            f"{check}, then rerun")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif not any(word in key.lower() for word in SECRET_KEYS):
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def run_params(config: dict[str, Any]) -> dict[str, Any]:
    """What the run used, as MLflow params: the sections the data, prepare, train and model steps
    read (dvc.yaml's params), with the split's and the model's defaults for keys the config leaves
    out. The config check refuses keys nobody reads, so nothing here is a setting the run ignored;
    the rest of the config (storage, verify, chameleon) is the provenance/config.yaml artifact."""
    return {"seed": config["seed"], "data": config["data"],
            "prepare": data.split_settings(config["prepare"]), "train": _train_params(config["train"]),
            "model": contract.params(_declared_model(), config)}


def _train_params(train: dict[str, Any]) -> dict[str, Any]:
    """train as it shapes the result: train.distributed with its schema defaults, without the
    rendezvous port (a launch detail), and left out for one process, which trains exactly as
    without it; so writing a default or moving the port never fails a strict verify."""
    train = dict(train)
    written = train.pop("distributed", None)
    if written:
        schema = json.loads((Path(__file__).parents[2] / "workflow" / "schemas" / "config.schema.json")
                            .read_text())["properties"]["train"]["properties"]["distributed"]
        shape = {key: rule["default"] for key, rule in schema["properties"].items()} | written
        shape.pop("master_port", None)
        if int(shape["nnodes"]) * int(shape["nproc_per_node"]) > 1:
            train["distributed"] = shape
    return train


def _declared_model() -> Any:
    """model.py for its CONFIG_SCHEMA: the module when imported already, else that literal read
    from the file (the config check refuses a model.py whose CONFIG_SCHEMA is not a literal)."""
    import sys
    import types

    loaded = sys.modules.get(f"{__package__}.model")
    if loaded is not None:
        return loaded
    constants = provenance.literal_constants(Path(__file__).with_name("model.py"))
    if "CONFIG_SCHEMA" in constants:
        return types.SimpleNamespace(CONFIG_SCHEMA=constants["CONFIG_SCHEMA"])
    from . import model

    return model


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


PLACEMENT = Path("logs") / "placement"


# Steps that run after track (they need its run): their record at track time is the previous
# run's, so track leaves them out and each adds its own when it writes to the run (link_report).
AFTER_TRACK = frozenset({"verify"})


def placements(root: Path, only: frozenset[str] | None = None) -> dict[str, dict[str, Any]]:
    """Where each step ran, as the steps recorded it when they started (logs/placement/<step>.json,
    workflow/scripts/placement.py): host, SLURM job, nodes, GPUs; a step not rerun keeps its record.
    By default the steps up to track; `only`: those steps."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted((root / PLACEMENT).glob("*.json")):
        if (path.stem not in only) if only is not None else (path.stem in AFTER_TRACK):
            continue
        try:
            records[path.stem] = _read(path)
        except ValueError:  # cut short by a killed step: that step reran, or its record is moot
            continue
    return records


def placement_tags(records: dict[str, dict[str, Any]]) -> dict[str, str]:
    """reprostack.step.<step>.host, .slurm_job_id (under SLURM), .nodes, .gpus_per_node; for a
    distributed train step also .nnodes and .nproc_per_node."""
    tags: dict[str, str] = {}
    for step, record in records.items():
        prefix = f"reprostack.step.{step}."
        tags[f"{prefix}host"] = str(record.get("host", ""))
        if record.get("slurm_job_id"):
            tags[f"{prefix}slurm_job_id"] = str(record["slurm_job_id"])
        tags[f"{prefix}nodes"] = str(record.get("nodes", 1))
        tags[f"{prefix}gpus_per_node"] = str(record.get("gpus_per_node", 0))
        for key, value in (record.get("distributed") or {}).items():
            tags[f"{prefix}{key}"] = str(value)
    return tags


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
        # Each split file's sha256 was recorded as prepare wrote it (data.recorded_sha256 trusts it
        # only while the file is unchanged): a large split is not read again here.
        files = {name: data.recorded_sha256(prepared / name) for name in (f"x_{part}.npy", f"y_{part}.npy")}
        out.append((MetaDataset(source, name=part, digest=data.manifest_digest(files)[:32]), part))
    return out


def _where(tracking: dict[str, Any]) -> str:
    if tracking["mode"] == "server":
        return f"the MLflow server at {redact(tracking['server_uri'].rstrip('/'))}"
    return f"the local MLflow store ({tracking['uri']})"


def _write_pending(root: Path, record: dict[str, Any]) -> None:
    path = root / PENDING
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _configured_uri(tracking: dict[str, Any]) -> str:
    """The store as the config names it (a local SQLite path stays relative: the project may move)."""
    return redact(tracking["server_uri"] if tracking["mode"] == "server" else tracking["uri"])


def settle_pending(root: Path, tracking: dict[str, Any], uri: str) -> None:
    """End as FAILED the run an earlier track step started and could not close (its server died
    or the step was killed): that step left the run's id in results/track-pending.json.

    The run is marked FAILED only while it is still RUNNING. A run in another store (the config
    changed since) that cannot be reached is named in one line on stderr and forgotten.
    """
    path = root / PENDING
    if not path.exists():
        return
    try:
        pending = json.loads(path.read_text())
        run_id = pending["run_id"]
    except (ValueError, KeyError, TypeError):
        path.unlink()
        return
    import sys

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    same_store = pending.get("tracking_uri") == _configured_uri(tracking)
    other = str(pending.get("tracking_uri", ""))
    if not same_store and other.startswith("sqlite:///"):
        other = tracking_uri(root, {"mode": "local", "uri": other})
        if not Path(other[len("sqlite:///"):]).exists():  # do not create an empty store there
            path.unlink(missing_ok=True)
            return
    client = MlflowClient(uri if same_store else other)
    try:
        run = client.get_run(run_id)
        if run.info.status in ("RUNNING", "SCHEDULED"):
            if pending.get("error"):
                client.set_tag(run_id, "track.error", pending["error"][:8000])
            client.set_terminated(run_id, "FAILED", end_time=pending.get("failed_at"))
            print(f"tracking: run {run_id}, left open by an earlier track step, is now marked FAILED")
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST" and same_store:
            raise
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            print(f"tracking: could not mark run {run_id} in {pending['tracking_uri']} as FAILED "
                  "(that store is no longer configured or reachable); it may still show as RUNNING "
                  "there", file=sys.stderr)
    path.unlink(missing_ok=True)


def _model_id() -> str:
    """The logged model's id, from the active run's outputs (log_model records it there, saving a
    request); MLflow's last logged model otherwise."""
    import mlflow

    outputs = getattr(mlflow.active_run(), "outputs", None)
    models = list(getattr(outputs, "model_outputs", None) or [])
    return models[-1].model_id if models else mlflow.last_logged_model().model_id


def _log_model(root: Path, run_id: str, fitted: Any, requirements: list[str],
               example: np.ndarray) -> str:
    """Log the model and return its id: with the model's MLflow flavor (model.log_to_mlflow), or,
    for a model without one, as a logged model whose artifacts are the files save() wrote."""
    import mlflow

    from . import model

    if hasattr(model, "log_to_mlflow"):
        model.log_to_mlflow(fitted, requirements, example)
        return _model_id()
    client = mlflow.MlflowClient()
    logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id,
                                            tags={"model.flavor": "none", "model.file": model.FILENAME})
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for path in (root / "models").iterdir():
                if path.is_file() and not path.name.startswith("."):
                    shutil.copy2(path, Path(scratch) / path.name)
            client.log_model_artifacts(logged.model_id, scratch)
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def record_run(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Log one run and return its ids (written to results/run.json).

    In few requests (each one costs a password check on a server with basic auth): the tags come
    with the run's creation, params and all metrics in one log_batch each (MlflowClient splits
    them at MLflow's limits: 100 params or tags, 1000 metrics, 1000 entries per request), the three
    datasets in one log_inputs, and the provenance files upload in parallel while the model is
    logged. The params are logged before the model (the logged model takes them over), the metrics
    after it: the final metrics (step 0) carry the model's id, as log_model would have linked them,
    without its per-metric history requests.

    Every request is bounded (tracking.timeout_s, .retries, .backoff_s). On a failure: one line on
    stderr, a non-zero exit, and the run ended as FAILED, now if the server answers, else by the
    next track step (the run's id waits in results/track-pending.json). Never left RUNNING.
    """
    tracking = config["tracking"]
    bound_http(tracking)
    results = root / "results"
    environment = _read(results / "environment.json")
    started = time.perf_counter()
    git = provenance.git_state(root)
    launcher = provenance.front_end()
    # The package list is the environment step's record (checked against the lock, and an input
    # of this step): read once per run, not again here.
    versions = provenance.tool_versions(environment["packages"])
    frozen = provenance.freeze(environment["packages"])
    provenance_seconds = time.perf_counter() - started

    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.tracking import MlflowClient

    from . import model

    data_record = _read(results / "data.json")
    metrics = _read(results / "metrics.json")
    history = _read(results / "history.json")
    training = _read(root / "models" / "training.json")
    image = _read(results / "image.json")
    where_ran = placements(root)

    relocate_store(root, tracking)
    uri = tracking_uri(root, tracking)
    where = _where(tracking)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        settle_pending(root, tracking, uri)
        experiment_id = _experiment(client, root, config)
    except Exception as error:
        what, todo = describe_failure(error, tracking)
        pending = " (an earlier track step's run is still to be marked FAILED)" if (
            root / PENDING).exists() else ""
        raise TrackingError(f"tracking: {where} {what}; nothing was recorded{pending}; {todo}.") from None
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
        # Every fact of models/training.json: versions, compile, the world size, backend and
        # seeds per rank of a distributed run (train.distributed.*); the named ones below as before.
        **flatten(training, "train."),
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
        **placement_tags(where_ran),
        **{f"version.{name}": version for name, version in versions.items()},
    }
    params = flatten(run_params(config))
    params["tracking.mode"] = tracking["mode"]
    now = int(time.time() * 1000)
    series = [
        Metric(f"epoch_{key}", float(row[key]), now, int(row["epoch"]))
        for row in history
        for key in row
        if key != "epoch"
    ]
    final = [(key, float(value)) for key, value in metrics.items()]
    datasets = _datasets(root, data_record)
    run_info = {k: v for k, v in git.items() if k != "diff"}
    requirements = [f"{n}=={v}" for n, v in sorted(provenance.pins(root).items())
                    if n in ("torch", "scikit-learn", "numpy", "mlflow")]
    example = np.load(root / "data" / "prepared" / "x_test.npy")[:2]
    contract.check(model)
    fitted = model.load(root / "models" / model.FILENAME)
    run_name = f"{launcher['front_end']}-{(git['commit'] or 'nogit')[:8]}"

    try:
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
    except Exception as error:
        what, todo = describe_failure(error, tracking)
        raise TrackingError(f"tracking: {where} {what}; nothing was recorded; {todo}.") from None
    run_id = run.info.run_id
    _write_pending(root, {"run_id": run_id, "tracking_uri": _configured_uri(tracking),
                          "started_at": now})
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in sorted(params.items())])
        with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(4) as pool:
            try:
                folder = Path(scratch)
                (folder / "git.diff").write_text(git["diff"], encoding="utf-8")
                (folder / "pip-freeze.txt").write_text(frozen, encoding="utf-8")
                (folder / "run.json").write_text(
                    json.dumps({**run_info, **launcher, "versions": versions}, indent=2, default=str))
                (folder / "placement.json").write_text(json.dumps(where_ran, indent=2, sort_keys=True))
                files = [folder / "git.diff", folder / "pip-freeze.txt", folder / "run.json",
                         folder / "placement.json",
                         results / "environment.json", results / "data.json", results / "image.json",
                         results / "metrics.json", results / "history.json",
                         root / "models" / "training.json", root / "data" / "prepared" / "meta.json",
                         root / "config" / "config.yaml",
                         root / "requirements.lock"]
                repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=uri)
                uploads = [pool.submit(repo.log_artifact, str(path), "provenance") for path in files]
                model_id = _log_model(root, run_id, fitted, requirements, example)
                client.log_batch(run_id, metrics=series + [
                    Metric(key, value, now, 0, model_id=model_id) for key, value in final
                ])
                mlflow.log_inputs(datasets=[d for d, _ in datasets],
                                  contexts=[c for _, c in datasets], tags_list=[None] * len(datasets))
                for upload in uploads:
                    upload.result()
            finally:  # on a failure, uploads not yet started are dropped, not retried in turn
                pool.shutdown(wait=True, cancel_futures=True)
        mlflow.end_run()
    except BaseException as error:  # Ctrl-C and SIGTERM (see track.py) must end the run too
        _fail(root, tracking, run_id, error)
    (root / PENDING).unlink(missing_ok=True)
    if tracking["mode"] == "server":  # what MLflow prints at a run's end, without its request
        base = tracking["server_uri"].rstrip("/")
        print(f"🏃 View run {run_name} at: {base}/#/experiments/{experiment_id}/runs/{run_id}")
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "experiment": tracking["experiment"],
        "tracking_uri": redact(tracking["server_uri"] if tracking["mode"] == "server" else tracking["uri"]),
    }


def _fail(root: Path, tracking: dict[str, Any], run_id: str, error: BaseException) -> None:
    """End the run as FAILED if the store answers within the retries, else leave its id for the
    next track step; then exit with one line."""
    import mlflow

    if isinstance(error, KeyboardInterrupt):
        line, todo = "the track step was interrupted", "rerun it"
    else:
        what, todo = describe_failure(error, tracking)
        line = f"{_where(tracking)} {what}"
    # One more bounded try to end the run; a server that did not answer for timeout_s gets 10 s.
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(min(10, int(tracking.get("timeout_s", 30))))
    try:
        mlflow.end_run("FAILED")  # pops the active run first: MLflow's atexit cannot end it FINISHED
    except Exception:  # still unreachable: the next track step ends it
        _write_pending(root, {**json.loads((root / PENDING).read_text()), "error": line,
                              "failed_at": int(time.time() * 1000)})
        fate = "stays RUNNING until the next track step marks it FAILED"
    else:
        with contextlib.suppress(Exception):
            mlflow.MlflowClient().set_tag(run_id, "track.error", line[:8000])
        (root / PENDING).unlink(missing_ok=True)
        fate = "is marked FAILED"
    raise TrackingError(f"tracking: {line}; run {run_id} {fate}; {todo}.") from None


def link_report(root: Path, config: dict[str, Any], result: dict[str, Any]) -> None:
    """Attach the reproduction report to this run's MLflow record (when the run is in this store)."""
    run_file = root / "results" / "run.json"
    if not run_file.exists():
        return
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = _read(run_file)["run_id"]
    tracking = config["tracking"]
    bound_http(tracking)
    relocate_store(root, tracking)
    client = MlflowClient(tracking_uri(root, tracking))
    try:
        client.get_run(run_id)
    except MlflowException as error:
        if "API request to" not in str(error):  # the store answered: it has no such run
            # A fresh clone reuses the committed results: their run lives in the author's store.
            print(f"verify: MLflow run {run_id} is not in this store; the report stays in results/")
            return
        what, todo = describe_failure(error, tracking)
        raise TrackingError(f"tracking: {_where(tracking)} {what}; the report stays in results/ "
                            f"and is not attached to run {run_id}; {todo}.") from None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            for name in ("report.md", "curves.png", "verify.json"):
                shutil.copy2(root / "results" / name, folder / name)
            client.log_artifacts(run_id, str(folder), artifact_path="reproduction")
        where_ran = placement_tags(placements(root, only=AFTER_TRACK))
        client.log_batch(run_id, tags=[RunTag("verify.status", result["status"]),
                                       RunTag("reproduction.report", "reproduction/report.md"),
                                       *(RunTag(key, value) for key, value in where_ran.items())])
    except Exception as error:
        what, todo = describe_failure(error, tracking)
        raise TrackingError(f"tracking: {_where(tracking)} {what}; the report stays in results/ "
                            f"and may be attached to run {run_id} only in part; {todo}.") from None
