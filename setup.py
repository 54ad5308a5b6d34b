"""Ship the Copier template inside the package, so an installed reprostack renders offline.

pyproject.toml holds the configuration; this only adds a build step. Built wheels carry
copier.yml, templates/project/ and workflow/ under reprostack/template/, with the
templates/project/workflow symlink resolved to real files (a wheel has no symlinks).
Editable installs skip it: they render from the checkout (see reprostack.template).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
TEMPLATE = ("copier.yml", "templates/project", "workflow")
JUNK = shutil.ignore_patterns("__pycache__", "*.py[cod]", ".pytest_cache", ".ruff_cache", ".snakemake")


class BuildWithTemplate(build_py):
    """build_py, then the template copied into build_lib/reprostack/template."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "reprostack" / "template"
        shutil.rmtree(dest, ignore_errors=True)  # no stale files from an earlier build
        for rel in TEMPLATE:
            src = ROOT / rel
            if src.is_dir():
                shutil.copytree(src, dest / rel, symlinks=False, ignore=JUNK)
            elif src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
            else:
                raise FileNotFoundError(f"reprostack template: no '{src}'; build from a full checkout")


setup(cmdclass={"build_py": BuildWithTemplate})
