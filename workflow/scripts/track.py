"""track: record this pipeline run in MLflow with params, metrics, the model and provenance."""

from _step import ROOT, project, write_json

config, tracking = project("tracking")
write_json("results/run.json", tracking.record_run(ROOT, config))
