"""track: record this pipeline run in MLflow with params, metrics, the model and provenance.

A failure (the server dies, its database is down) is one line on stderr and a non-zero exit; the
run is ended as FAILED, at once or by the next track step (see tracking.record_run).
"""

import signal

from _step import ROOT, project, write_json
from preflight import tracking_server


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # end the run as FAILED, as Ctrl-C does


signal.signal(signal.SIGTERM, _interrupted)
config, tracking = project("tracking")
# A clear error now, not after retries. The login and the server's database are checked by the
# first real request (the experiment's look-up), reported as clearly: one password check less.
tracking_server(config["tracking"], consequence="Nothing was recorded.", read_check=False)
(ROOT / "results" / "run.json").unlink(missing_ok=True)  # a failed step leaves no stale run id
write_json("results/run.json", tracking.record_run(ROOT, config))
