"""Where the Copier template lives, and what a generated project records about it.

The template is this repository (copier.yml at its root, files under templates/project and the
shared workflow/). In a checkout (an editable install included) `reprostack new` renders from the
checkout, so Copier can record the git commit it rendered from. A built wheel ships the same files,
the workflow/ symlink resolved, under `reprostack/template/`, so an installed reprostack renders
offline. Either way the answers file names the canonical template URL, never a local folder, so
`copier update` works from any clone of a generated project.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from reprostack.errors import ReprostackError

_ENV = "REPROSTACK_TEMPLATE"
# The fallback for template_url(); pyproject.toml's [project.urls] Template is the source.
TEMPLATE_URL = "https://github.com/reprostack/reprostack.git"
# Where the wheel puts copier.yml, templates/project/ and workflow/ (see setup.py).
SHIPPED = Path(__file__).resolve().parent / "template"


def template_url() -> str:
    """The canonical template URL: `[project.urls] Template` of the installed distribution."""
    try:
        urls = metadata.metadata("reprostack").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "template" and url.strip():
            return url.strip()
    return TEMPLATE_URL


def checkout_root() -> Path | None:
    """The reprostack checkout this package sits in (generator/ beside copier.yml), if any."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "copier.yml").is_file() and (root / "templates" / "project").is_dir() else None


def template_root() -> Path:
    """The folder holding copier.yml: $REPROSTACK_TEMPLATE, else the checkout this package sits in,
    else the template shipped inside the installed package."""
    if explicit := os.environ.get(_ENV):
        root = Path(explicit).expanduser()
        if not (root / "copier.yml").is_file():
            raise ReprostackError(
                f"{_ENV}: '{explicit}' holds no copier.yml; accepted: a reprostack checkout, or unset it"
            )
        return root
    for root in (checkout_root(), SHIPPED):
        if root is not None and (root / "copier.yml").is_file():
            return root
    raise ReprostackError(
        f"template: no copier.yml beside '{Path(__file__).resolve().parent}' and none shipped in "
        f"'{SHIPPED}'; accepted: set {_ENV} to a reprostack checkout, or pass --template URL"
    )
