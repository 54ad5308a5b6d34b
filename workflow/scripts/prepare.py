"""prepare: split the raw table into train and test parts in data/prepared, as prepare.* says."""

from _step import ROOT, keeping_last_good, project

config, data = project("data")
with keeping_last_good("prepare", ROOT / "data" / "prepared") as staging:
    data.prepare(ROOT / "data" / "raw", staging, config, ROOT)
