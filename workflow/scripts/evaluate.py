"""evaluate: score the saved model on the held-out split; write results/metrics.json."""

from _step import ROOT, project, write_json

config, evaluate = project("evaluate")
write_json("results/metrics.json", evaluate.evaluate(ROOT / "models", ROOT / "data" / "prepared"))
