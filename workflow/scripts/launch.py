"""How training is launched: one process, or torchrun (DDP) over processes and nodes.

The launch lives here, outside the model code, so any model that follows the contract scales out
the same way. `train.distributed` in config/config.yaml holds the shape (nodes, processes per
node, backend, port); the node's own place in it comes from the environment, because it differs
per node while the config is one file:

    REPROSTACK_NODE_RANK     this node's rank (0 on the node that runs the pipeline; default 0)
    REPROSTACK_MASTER_ADDR   the first node's address, where torchrun rendezvous (default 127.0.0.1)

The pipeline's train step runs torchrun as node 0. On a multi-node lease every other node runs
`python workflow/scripts/launch.py --node-rank I --master-addr ADDR` (remote_run starts it), which
runs the same torchrun command line with its own rank.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RANK_SCRIPT = "workflow/scripts/train_rank.py"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.json"


@functools.cache
def schema_defaults(schema: Path = SCHEMA) -> dict[str, Any]:
    """train.distributed's defaults, as the config schema states them (their one owner): read on
    first use, so that importing this module never fails before the config check can say why."""
    import json

    section = json.loads(schema.read_text())["properties"]["train"]["properties"]["distributed"]
    return {key: rule["default"] for key, rule in section["properties"].items()}


def shape(train: dict[str, Any], schema: Path = SCHEMA) -> dict[str, Any]:
    """train.distributed with its defaults filled in ({"nnodes": 1, "nproc_per_node": 1,
    "backend": "auto", "master_port": 29500} where the config leaves them out)."""
    return {**schema_defaults(schema), **(train.get("distributed") or {})}


def world_size(train: dict[str, Any]) -> int:
    dist = shape(train)
    return int(dist["nnodes"]) * int(dist["nproc_per_node"])


def is_distributed(train: dict[str, Any]) -> bool:
    """More than one training process in all: torchrun launches them."""
    return world_size(train) > 1


def node_rank(env: Mapping[str, str] | None = None) -> int:
    return int((os.environ if env is None else env).get("REPROSTACK_NODE_RANK", "0"))


def master_addr(env: Mapping[str, str] | None = None) -> str:
    return (os.environ if env is None else env).get("REPROSTACK_MASTER_ADDR") or "127.0.0.1"


def local_threads(train: dict[str, Any]) -> int:
    """CPU threads training takes on this node: its processes times train.num_threads each."""
    return int(shape(train)["nproc_per_node"]) * int(train.get("num_threads", 1))


def cuda_wanted(train: dict[str, Any]) -> bool:
    """Whether training computes on CUDA (train.device auto with a GPU visible, or cuda)."""
    if train.get("device", "auto") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def backend(train: dict[str, Any]) -> str:
    """The torch.distributed backend: nccl on CUDA, gloo on the CPU (auto), or the one asked for.
    Refused in one line, as the config check cannot see the GPUs: nccl without a visible GPU, and
    training on CUDA with more processes on this node than it has GPUs (one each)."""
    asked = shape(train)["backend"]
    cuda = cuda_wanted(train)
    if asked == "nccl" and not cuda:
        raise SystemExit("train.distributed.backend: 'nccl' needs a CUDA GPU, but none is visible "
                         f"(train.device {train.get('device', 'auto')!r}); accepted here: gloo or auto")
    if cuda:  # one GPU per process on this node (train_rank.py: cuda:LOCAL_RANK)
        import torch

        wanted, visible = int(shape(train)["nproc_per_node"]), torch.cuda.device_count()
        if wanted > visible:
            raise SystemExit(f"train.distributed.nproc_per_node: {wanted} processes on this node need "
                             f"one CUDA GPU each, but {visible} GPU(s) are visible; accepted: "
                             f"nproc_per_node at most {visible}, or train.device: cpu (gloo)")
    if asked == "auto":
        return "nccl" if cuda else "gloo"
    return str(asked)


def node_env(train: dict[str, Any], env: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """What every node checks and sets before its torchrun, node 0 (run_node) and a worker (main)
    alike: the backend, refused in one line where this node cannot run it, and the processes'
    environment (OMP_NUM_THREADS defaults to train.num_threads: torchrun's own warning otherwise)."""
    chosen = backend(train)  # refused before any process starts
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(int(train.get("num_threads", 1))))
    return chosen, env


def run_node(train: dict[str, Any], models: Path | None, env: dict[str, str] | None = None,
             history: Path | None = None) -> None:
    """Run this node's torchrun (node REPROSTACK_NODE_RANK, rendezvous at REPROSTACK_MASTER_ADDR)
    and wait; rank 0 writes the model into `models` (REPROSTACK_MODELS_DIR) and its history into
    `history` (REPROSTACK_HISTORY): both staged, for the train step to move in once every process
    has succeeded. The processes' output goes through this process, so the step's log holds it; a
    failed process is one line naming torchrun's exit status."""
    import subprocess

    dist = shape(train)
    given = os.environ if env is None else env
    if int(dist["nnodes"]) > 1 and not given.get("REPROSTACK_MASTER_ADDR"):
        nnodes = int(dist["nnodes"])
        raise SystemExit(f"train.distributed.nnodes: {nnodes} needs the other {nnodes - 1} node(s) "
                         "started (python workflow/scripts/launch.py --node-rank I --master-addr ADDR "
                         "on each) and REPROSTACK_MASTER_ADDR set here; accepted: nnodes 1, or a "
                         f"Chameleon lease with chameleon.count: {nnodes} (snakemake remote_run)")
    chosen, env = node_env(train, given)
    if models is not None:
        env["REPROSTACK_MODELS_DIR"] = str(models)
    if history is not None:
        env["REPROSTACK_HISTORY"] = str(history)
    rank = node_rank(env)
    argv = torchrun_argv(train, rank, master_addr(env))
    print(f"train: torchrun, {world_size(train)} processes ({dist['nnodes']} node(s) x "
          f"{dist['nproc_per_node']}), backend {chosen}, node {rank}", flush=True)
    with subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        port_taken = False
        for line in proc.stdout:
            sys.stdout.write(line)
            port_taken = port_taken or ("EADDRINUSE" in line and rank == 0)
    if port_taken:
        raise SystemExit(f"train.distributed.master_port: {dist['master_port']} is in use on this "
                         "machine (another training?); accepted: a free port (1-65535). The last good "
                         "models/ was kept")
    if proc.returncode != 0:
        raise SystemExit(f"train: torchrun exited with status {proc.returncode} (the lines above say "
                         "which process failed and why); the last good models/ and "
                         "results/history.json were kept")


def torchrun_argv(train: dict[str, Any], rank: int, addr: str, script: str = RANK_SCRIPT) -> list[str]:
    """The torchrun command line for node `rank` (static rendezvous at addr:master_port)."""
    dist = shape(train)
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(int(dist["nnodes"])),
        "--nproc-per-node", str(int(dist["nproc_per_node"])),
        "--node-rank", str(rank),
        "--master-addr", addr,
        "--master-port", str(int(dist["master_port"])),
        script,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """A worker node's half of a multi-node run: the same torchrun line, this node's rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-rank", type=int, required=True)
    parser.add_argument("--master-addr", required=True)
    args = parser.parse_args(argv)
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    _, env = node_env(config["train"])  # the same checks and environment as node 0's run_node
    argv_ = torchrun_argv(config["train"], args.node_rank, args.master_addr)
    os.chdir(ROOT)
    os.execve(argv_[0], argv_, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
