"""Static checks of what the generator renders for containers, over every option combination:
hadolint on each Dockerfile, the Compose specification's schema on each compose file, and the
pinning, exposure and secret rules the issue sets."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT
from reprostack.generate import render

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
from chameleon import FLAVORS, NODE_TYPES  # what provisioning accepts, per site

SCHEMA = ROOT / ".venv" / "share" / "compose-spec.json"
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
SHA = "0123456789abcdef0123456789abcdef01234567"
SOURCES = {
    "sample": {},
    "huggingface": {"hf_repo_id": "acme/d", "hf_revision": SHA},
    "git": {"git_url": "https://example.org/d.git", "git_commit": SHA},
    "url": {"data_url": "https://example.org/d.csv", "data_sha256": "a" * 64},
}
SITE_OF = {**{name: "CHI@TACC" for name in NODE_TYPES}, **{name: "KVM@TACC" for name in FLAVORS}}
ALL = list(itertools.product(["pytorch", "sklearn"], SOURCES, SITE_OF))
FEW = [("pytorch", "sample", "gpu_rtx_6000"), ("pytorch", "url", "gpu_mi100"),
       ("sklearn", "git", "compute_skylake")]


def check_rendered(project: Path) -> None:
    dockerfiles = [project / "docker" / "Dockerfile", project / "docker" / "mlflow.Dockerfile"]
    lint = subprocess.run([HADOLINT, "--no-color", *map(str, dockerfiles)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        assert "|| true" not in text
        for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    compose = yaml.safe_load((project / "docker" / "compose.yaml").read_text())
    jsonschema.validate(compose, json.loads(SCHEMA.read_text()))
    for name, service in compose["services"].items():
        if "image" in service:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]) and ":latest" not in service["image"]
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"
            assert ":9001" not in str(port), "the MinIO console is not published"
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "SECRET_ACCESS")):
                assert "${" in str(value), f"{name}.{key} must come from .env"
    assert compose["services"]["mlflow"]["command"][2:4] == ["--app-name", "basic-auth"]
    train = compose["services"]["train"]
    node_type = yaml.safe_load((project / "config" / "config.yaml").read_text())["chameleon"]["node_type"]
    assert ("devices" in train) == (node_type == "gpu_mi100")
    assert ("deploy" in train) == (node_type.startswith(("gpu_", "g1.")) and node_type != "gpu_mi100")


@pytest.mark.skipif(HADOLINT is None or not SCHEMA.exists(), reason="run `make setup` first")
@pytest.mark.parametrize(("framework", "source", "node_type"), FEW)
def test_rendered_containers_pass_static_checks(tmp_path: Path, framework: str, source: str,
                                                node_type: str) -> None:
    render(tmp_path / "p", {"framework": framework, "data_source": source, "node_type": node_type,
                            "chameleon_site": SITE_OF[node_type], **SOURCES[source]}, defaults=True)
    check_rendered(tmp_path / "p")


@pytest.mark.slow
@pytest.mark.skipif(HADOLINT is None or not SCHEMA.exists(), reason="run `make setup` first")
def test_every_option_combination_renders_a_valid_project(tmp_path: Path) -> None:
    schema = json.loads((ROOT / "workflow" / "schemas" / "config.schema.json").read_text())
    for index, (framework, source, node_type) in enumerate(ALL):
        target = tmp_path / f"p{index}"
        render(target, {"framework": framework, "data_source": source, "node_type": node_type,
                        "chameleon_site": SITE_OF[node_type], **SOURCES[source]}, defaults=True)
        check_rendered(target)
        jsonschema.validate(yaml.safe_load((target / "config" / "config.yaml").read_text()), schema)
        dockerfile = (target / "docker" / "Dockerfile").read_text()
        assert ("requirements-torch.txt" in dockerfile) == (framework == "pytorch")
        assert ("whl/rocm" in dockerfile) == (framework == "pytorch" and node_type == "gpu_mi100")
        cpu_node = node_type.startswith(("compute", "m1"))
        assert ("whl/cpu" in dockerfile) == (framework == "pytorch" and cpu_node)
