"""Send data and models to the DVC remote that storage.mode selects, with a clear error if it is down.

Nothing is lost when the push fails: everything stays in the local DVC cache (.dvc/cache), and
running this again once the remote is reachable sends it.
"""

from storage import transfer

output = transfer(
    "push",
    "the DVC remote '{remote}' is unreachable or refused the upload{reason}. Nothing is lost: the "
    "data stays in the local DVC cache (.dvc/cache); run this again when the remote is up.",
)
print(output or "push: everything is up to date on the remote")
