"""Make the current results the reference that `verify` checks later runs against.

Run after a complete pipeline run, then commit: git add reference results dvc.lock && git commit
"""

from _step import ROOT, project

config, verify = project("verify")
target = verify.publish(ROOT, config)
print(f"reference results written to {target.relative_to(ROOT)}/; commit them with:\n"
      "  git add reference results dvc.lock && git commit -m 'Reference results'")
