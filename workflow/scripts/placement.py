"""Where each step runs: what its SLURM job asks for, and where it did run.

`job_resources(config, rule)` turns config/config.yaml's `cluster:` section into the rule's
Snakemake resources, which snakemake-executor-plugin-slurm passes to sbatch under
`snakemake --profile workflow/profiles/slurm` (local runs and `dvc repro` ignore them).

`record(step)` writes logs/placement/<step>.json when a step starts (_step.log_step): the host,
the SLURM job (id, partition, nodes) when there is one, the GPUs the step can see, and for train the
distributed shape (train.distributed). The track step logs these records into the MLflow run. They
are not declared outputs, so they change nothing in the DAG; a step that is not rerun keeps the
record of the run that produced its current output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLACEMENT = Path("logs") / "placement"
# config/config.yaml's cluster keys -> the resources the SLURM executor plugin reads.
RESOURCE_NAMES = {"cpus": "cpus_per_task", "mem_mb": "mem_mb", "runtime_min": "runtime", "gpus": "gpu"}


def job_resources(config: dict[str, Any], rule: str) -> dict[str, Any]:
    """The resources of `rule`'s job: cluster.default, overridden key by key by cluster.steps.<rule>,
    plus the partition and account when set. Empty without a cluster section.

    The environment step records the hardware the results are computed on (CPU, GPUs), so its job
    asks for what train's asks for (the same kind of node), then for its own steps.environment."""
    cluster = config.get("cluster") or {}
    steps = cluster.get("steps") or {}
    wanted = {**(cluster.get("default") or {}), **(steps.get("train") or {} if rule == "environment" else {}),
              **(steps.get(rule) or {})}
    resources = {RESOURCE_NAMES[key]: value for key, value in wanted.items()}
    if cluster.get("partition"):
        resources["slurm_partition"] = cluster["partition"]
    if cluster.get("account"):
        resources["slurm_account"] = cluster["account"]
    return resources


def visible_gpus(env: dict[str, str] | None = None, dev: Path = Path("/dev")) -> int:
    """GPUs this process may use, without importing torch or starting nvidia-smi: the devices
    CUDA_VISIBLE_DEVICES names, else SLURM's count for this node, else the NVIDIA device files."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = [name for name in visible.split(",") if name.strip()]
        return 0 if names in ([], ["NoDevFiles"], ["-1"]) else len(names)
    if env.get("SLURM_GPUS_ON_NODE", "").isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    return sum(1 for path in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", path.name))


def where(step: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """This process's placement: host, SLURM job (None outside SLURM), nodes, GPUs per node."""
    env = os.environ if env is None else env
    host = socket.gethostname()
    return {
        "step": step,
        "host": host,
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_partition": env.get("SLURM_JOB_PARTITION"),
        "nodelist": env.get("SLURM_JOB_NODELIST", host),
        "nodes": int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1),
        "gpus_per_node": visible_gpus(env),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def distributed_shape(root: Path = ROOT) -> dict[str, int]:
    """train.distributed's nodes and processes per node (launch.py fills in the defaults)."""
    import yaml
    from launch import shape

    config = yaml.safe_load((root / "config" / "config.yaml").read_text()) or {}
    dist = shape(config.get("train") or {})
    return {"nnodes": int(dist["nnodes"]), "nproc_per_node": int(dist["nproc_per_node"])}


def record(step: str, root: Path = ROOT) -> Path:
    """Write logs/placement/<step>.json for the step starting in this process."""
    placement = where(step)
    if step == "train":  # a bad config is the config check's to report, in its own words
        with contextlib.suppress(Exception):
            placement["distributed"] = distributed_shape(root)
    path = root / PLACEMENT / f"{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(placement, indent=2, sort_keys=True) + "\n")
    return path
