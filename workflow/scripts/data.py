"""data: fetch the pinned source into data/raw, verify it, record the hash of every file."""

from _step import ROOT, project, write_json

config, data = project("data")
manifest = data.fetch(config["data"], ROOT / "data" / "raw")
write_json("results/data.json", manifest)
