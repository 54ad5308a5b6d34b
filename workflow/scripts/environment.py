"""environment: check installed packages against the lock, record software and hardware."""

from _step import project, write_json

config, provenance = project("provenance")
provenance.check_lock()
write_json("results/environment.json", provenance.environment())
