"""train: fit the model on the prepared split, deterministically; save it and its per-epoch history."""

from _step import ROOT, project, write_json

config, train = project("train")
history = train.train(ROOT / "data" / "prepared", ROOT / "models", config)
write_json("results/history.json", history)
