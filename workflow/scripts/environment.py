"""environment: check installed packages against the lock, record software and hardware."""

from _step import project, write_json

config, provenance = project("provenance")
packages = provenance.installed()  # read once: the lock check and the record share it
provenance.check_lock(have=packages)
write_json("results/environment.json", provenance.environment(packages=packages))
