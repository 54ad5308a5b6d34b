"""Where the Copier template lives.

The template is this repository itself (copier.yml at its root, files under templates/project and the
shared workflow/), so Copier can record the git commit it rendered from and `copier update` works.
"""

from __future__ import annotations

import os
from pathlib import Path

from reprostack.errors import ReprostackError

_ENV = "REPROSTACK_TEMPLATE"


def template_root() -> Path:
    """The folder holding copier.yml: $REPROSTACK_TEMPLATE, else the checkout this package sits in."""
    root = Path(os.environ.get(_ENV) or Path(__file__).resolve().parent.parent)
    if not (root / "copier.yml").is_file():
        raise ReprostackError(
            f"template: no copier.yml in '{root}'; set {_ENV} to a reprostack checkout"
        )
    return root
