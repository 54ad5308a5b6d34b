"""prepare: split the raw table into train and test parts in data/prepared, as prepare.* says
(.npy files, which data.load_split memory-maps; the table is parsed in blocks, see data.prepare)."""

from _step import ROOT, keeping_last_good, project

config, data = project("data")
with keeping_last_good("prepare", ROOT / "data" / "prepared") as staging:
    data.prepare(ROOT / "data" / "raw", staging, config, ROOT)
