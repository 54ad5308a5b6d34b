"""train: fit the model on the prepared split, deterministically; save it and its per-epoch history."""

from _step import ROOT, keeping_last_good, project, write_json
from preflight import tracking_server

config, train = project("train")
tracking_server(config["tracking"])  # under `dvc repro` too: fail before hours of training
with keeping_last_good("train", ROOT / "models") as staging:
    history = train.train(ROOT / "data" / "prepared", staging, config)
write_json("results/history.json", history)
