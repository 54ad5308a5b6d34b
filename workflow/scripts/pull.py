"""Fetch the author's data and models from the DVC remote into this working copy, to inspect them.

Reproducing does not need this: `snakemake --cores all` (or `dvc repro`) pulls only the raw data
it needs and recomputes everything else; pulled outputs never stand in for recomputed ones (the
environment step of a fresh working copy makes every later step run again).
"""

from storage import transfer

print(transfer(
    "pull",
    "the DVC remote '{remote}' is unreachable or incomplete{reason}. Nothing is lost: "
    "`snakemake --cores all` recomputes everything from the pinned data source and verifies it.",
) or "pull: everything is up to date")
