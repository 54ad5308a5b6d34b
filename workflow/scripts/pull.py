"""Fetch data and models from the DVC remote, then align modification times for Snakemake.

Without the remote (no credentials, a fresh machine) nothing is lost: every result can be
recomputed from the original, pinned data source, and `verify` checks it against reference/.
"""

from storage import ROOT, transfer
from sync_mtimes import sync

transfer(
    "pull",
    "the DVC remote '{remote}' is unreachable or incomplete{reason}.\n"
    "  You can still reproduce everything from the original data source and verify it:\n"
    "    snakemake --cores all --forceall     (or: dvc repro --force)",
)
for stage, state in sync(ROOT).items():
    print(f"pull: {stage}: {state}")
