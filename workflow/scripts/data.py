"""data: the pinned raw data in data/raw, verified, with the hash of every file.

When dvc.lock already pins data/raw for this exact data config (a published repository), the
files are pulled from the DVC remote and checked against dvc.lock on download; otherwise, or when
the remote cannot be read, they are fetched from the pinned source. Either way nothing else
is reused: every later step recomputes from these bytes. A download is hashed as it streams to
disk, once; the hash is recorded with the file (data.record_sha256) for verify to reuse.
"""

from _step import ROOT, keeping_last_good, project, write_json
from storage import restore_output

config, data = project("data")
raw = ROOT / "data" / "raw"
# The last good data/raw stays until new data is verified: fetch() builds it beside and swaps.
with keeping_last_good("data"):
    origin = restore_output(ROOT, "data", "data/raw", {"data": config["data"]})
    if origin is None:
        record = data.fetch(config["data"], raw)
        record["origin"] = "fetched from the pinned source"
    else:
        record = data.describe(config["data"], raw)
        record["origin"] = origin
print(f"data: {record['origin']}")
write_json("results/data.json", record)
