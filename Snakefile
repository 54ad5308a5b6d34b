# This repository's reference pipeline (the demo): generate the example project with default
# answers, reproduce it, and check its metrics and MLflow record. dvc.yaml declares the same steps.
import hashlib
from pathlib import Path


def sources_digest() -> str:
    """Content hash of the generator, template and workflow. Template file names hold Jinja
    braces that Snakemake would read as wildcards, so they enter as a param, not as inputs."""
    digest = hashlib.sha256()
    for top in ("generator", "templates", "workflow"):
        for path in sorted(Path(top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


rule all:
    default_target: True
    input:
        "build/demo/check.json",


rule generate:
    input:
        "copier.yml",
        "tools/demo.py",
    output:
        "build/demo/generate.json",
    params:
        sources=sources_digest(),
    shell:
        "python tools/demo.py generate"


rule reproduce:
    input:
        "build/demo/generate.json",
    output:
        "build/demo/metrics.json",
    shell:
        "python tools/demo.py reproduce"


rule check:
    input:
        "build/demo/metrics.json",
    output:
        "build/demo/check.json",
    shell:
        "python tools/demo.py check"
