"""prepare: a seeded, stratified train/test split of the raw table into data/prepared."""

from _step import ROOT, project

config, data = project("data")
data.prepare(ROOT / "data" / "raw", ROOT / "data" / "prepared", config)
