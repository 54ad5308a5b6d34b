"""Fetch data and models from the DVC remote, then align modification times for Snakemake.

Without the remote (no credentials, a fresh machine) nothing is lost: every result can be
recomputed from the original, pinned data source, and `verify` checks it against reference/.
"""

import subprocess
import sys

from storage import load_dotenv, sync_remote
from sync_mtimes import ROOT, sync

load_dotenv(ROOT)
remote = sync_remote(ROOT)
proc = subprocess.run(["dvc", "pull", "--remote", remote], cwd=ROOT, capture_output=True, text=True)
if proc.returncode != 0:
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    sys.exit(
        "pull: the DVC remote is unreachable or incomplete"
        + (f" ({detail[-1]})" if detail else "")
        + ".\n  You can still reproduce everything from the original data source and verify it:\n"
        "    snakemake --cores all --forceall     (or: dvc repro --force)"
    )
for stage, state in sync().items():
    print(f"pull: {stage}: {state}")
