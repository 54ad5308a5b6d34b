"""prepare: a seeded, stratified train/test split of the raw table into data/prepared."""

from _step import ROOT, keeping_last_good, project

config, data = project("data")
with keeping_last_good("prepare", ROOT / "data" / "prepared") as staging:
    data.prepare(ROOT / "data" / "raw", staging, config)
