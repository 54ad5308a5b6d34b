"""reprostack: generate reproducible ML research repositories (Snakemake + DVC + MLflow)."""

from reprostack.errors import ReprostackError
from reprostack.generate import generate

__all__ = ["ReprostackError", "__version__", "generate"]
__version__ = "0.2.0"
