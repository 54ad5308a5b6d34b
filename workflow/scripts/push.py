"""Send data and models to the DVC remote that storage.mode selects, with a clear error if it is down.

Nothing is lost when the push fails: everything stays in the local DVC cache (.dvc/cache), and
running this again once the remote is reachable sends it.
"""

import subprocess
import sys

from storage import ROOT, load_dotenv, sync_remote

load_dotenv(ROOT)
remote = sync_remote(ROOT)
proc = subprocess.run(["dvc", "push", "--remote", remote], cwd=ROOT, capture_output=True, text=True)
if proc.returncode != 0:
    detail = (proc.stderr or proc.stdout).strip().splitlines()
    sys.exit(
        f"push: the DVC remote '{remote}' is unreachable or refused the upload"
        + (f" ({detail[-1]})" if detail else "")
        + ". Nothing is lost: the data stays in the local DVC cache (.dvc/cache); "
        "run this again when the remote is up."
    )
print(proc.stdout.strip() or "push: everything is up to date on the remote")
