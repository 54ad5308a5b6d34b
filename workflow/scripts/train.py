"""train: fit the model on the prepared split, deterministically; save it and its per-epoch history.

One process trains here; with train.distributed asking for more, torchrun runs them (launch.py,
train_rank.py) and rank 0 writes the same files into the staging folder, which this moves in only
once every process has succeeded: a failed launch leaves models/ and results/history.json as they
were, together.
"""

import shutil

import launch
from _step import ROOT, keeping_last_good, project, write_json
from preflight import tracking_server

config, train = project("train")
tracking_server(config["tracking"])  # under `dvc repro` too: fail before hours of training
with keeping_last_good("train", ROOT / "models") as staging:
    if launch.is_distributed(config["train"]):
        staged_history = staging / ".history.json"  # rank 0 writes it; moved out before the swap
        launch.run_node(config["train"], staging, history=staged_history)
        (ROOT / "results").mkdir(parents=True, exist_ok=True)
        shutil.move(staged_history, ROOT / "results" / "history.json")
    else:
        write_json("results/history.json", train.train(ROOT / "data" / "prepared", staging, config))
