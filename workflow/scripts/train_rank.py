"""One training process of a torchrun launch (DDP): started by workflow/scripts/launch.py, never
by hand.

torchrun gives each process its place (RANK, WORLD_SIZE, LOCAL_RANK); this joins the process group
with the configured backend (gloo on the CPU, nccl on CUDA, one GPU per local rank), then trains
through the package's train() like one process would: the model's fit() shards each epoch and
DDP averages the gradients. Rank 0 alone writes: the model and models/training.json into the
folder the train step named (REPROSTACK_MODELS_DIR), and the history into the file it named
(REPROSTACK_HISTORY); the train step moves both in once torchrun succeeded. The MLflow run is
the track step's, from those files: one run per training, whatever the world size.
"""

from __future__ import annotations

import os
from pathlib import Path

import launch
from _step import ROOT, keeping_last_good, project, write_json


def main() -> None:
    config, train = project("train")
    rank, world, local = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    dist = launch.shape(config["train"])
    process = {"rank": rank, "world_size": world, "backend": launch.backend(config["train"]),
               "nnodes": int(dist["nnodes"]), "nproc_per_node": int(dist["nproc_per_node"])}
    import torch
    import torch.distributed

    if process["backend"] == "nccl" or launch.cuda_wanted(config["train"]):
        torch.cuda.set_device(local)  # "cuda" in fit() is this rank's own GPU
    torch.distributed.init_process_group(process["backend"])
    try:
        prepared = ROOT / "data" / "prepared"
        if rank != 0:
            train.train(prepared, None, config, process)
            return
        staging, history_at = os.environ.get("REPROSTACK_MODELS_DIR"), os.environ.get("REPROSTACK_HISTORY")
        if staging:  # the train step keeps the last good models/ until every process succeeded
            history = train.train(prepared, Path(staging), config, process)
            # staged too: the train step moves it to results/history.json with the models
            write_json(history_at or "results/history.json", history)
        else:  # started without the train step (launch.py on node 0): keep it here
            with keeping_last_good("train", ROOT / "models") as models:
                history = train.train(prepared, models, config, process)
                write_json("results/history.json", history)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
