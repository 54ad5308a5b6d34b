"""Static checks of what the generator renders for containers, over every option combination:
hadolint on each Dockerfile, the Compose specification's schema on each compose file, and the
pinning, exposure and secret rules the issue sets."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT
from reprostack.generate import render, write_secrets

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import remote  # the compose command configure and remote_run give on the node
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
PINNED_IMAGE = r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}"  # tag for people, digest for the registry


def compose_cli() -> list[str] | None:
    """Docker Compose v2 (tools/setup-system.sh installs it as the docker CLI plugin); `config`
    needs no engine. The plugin binary also runs on its own where the docker CLI is missing."""
    plugin = Path("/usr/local/lib/docker/cli-plugins/docker-compose")
    for cmd in (["docker", "compose"], [str(plugin)]):
        if shutil.which(cmd[0]):
            version = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True)
            if version.returncode == 0 and version.stdout.lstrip("v").startswith("2."):
                return cmd
    return None


COMPOSE = compose_cli()


def check_rendered(project: Path) -> None:
    dockerfiles = [project / "docker" / "Dockerfile", project / "docker" / "mlflow.Dockerfile"]
    lint = subprocess.run([HADOLINT, "--no-color", *map(str, dockerfiles)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        assert "|| true" not in text
        for base in re.findall(r"^FROM\s+(\S+)", text, re.M):
            assert re.fullmatch(PINNED_IMAGE, base), base
    compose = yaml.safe_load((project / "docker" / "compose.yaml").read_text())
    jsonschema.validate(compose, json.loads(SCHEMA.read_text()))
    for name, service in compose["services"].items():
        if "image" in service:
            assert re.fullmatch(PINNED_IMAGE, service["image"]) and ":latest" not in service["image"], name
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
        assert ("torch" in dockerfile) == (framework == "pytorch")
        gpu_node = node_type.startswith(("gpu_", "g1.")) and node_type != "gpu_mi100"
        assert ("-r requirements-torch-cuda.lock" in dockerfile) == (framework == "pytorch" and gpu_node)
        assert ("-r requirements-torch-cpu.lock" in dockerfile) == (
            framework == "pytorch" and node_type.startswith(("compute", "m1")))
        for command in re.findall(r"pip install [^&\n]*", dockerfile.replace("\\\n", " ")):
            # Locked with hashes; except ROCm (no lock yet) and the project itself (its own source,
            # nothing downloaded: --no-deps without build isolation).
            own = "--no-deps" in command and "--no-build-isolation" in command and command.endswith("-e .")
            assert "--require-hashes" in command or "whl/rocm" in command or own, command
        assert ("whl/rocm" in dockerfile) == (framework == "pytorch" and node_type == "gpu_mi100")
        cpu_node = node_type.startswith(("compute", "m1"))
        assert ("whl/cpu" in dockerfile) == (framework == "pytorch" and cpu_node)


@pytest.mark.skipif(COMPOSE is None, reason="needs Docker Compose v2: bash tools/setup-system.sh")
def test_documented_compose_command_reads_the_project_env(tmp_path: Path) -> None:
    """The README's `docker compose ... up -d`, as `config` from the project root, resolves every
    secret from the project's .env; the command without --env-file does not (Compose looks for
    .env beside docker/compose.yaml), so this test catches that bug."""
    project = tmp_path / "p"
    render(project, {}, defaults=True)
    write_secrets(project)  # the .env that `reprostack new` writes, by the same code
    secrets = dict(line.split("=", 1) for line in (project / ".env").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    documented = re.search(r"^docker compose (.+?) up -d\b", (project / "README.md").read_text(), re.M)
    assert documented, "the README gives the command that starts the stack"
    assert f"docker compose {documented.group(1)}" == remote.COMPOSE, "the node runs the same command"
    assert f"docker compose {documented.group(1)} up -d" in (project / "docker/compose.yaml").read_text()
    env = {k: v for k, v in os.environ.items() if k not in secrets and not k.startswith("COMPOSE_")}

    def config(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*COMPOSE, *args, "--profile", "train", "config", "--format", "json"],
                              cwd=project, env=env, capture_output=True, text=True)

    resolved = config(*shlex.split(documented.group(1)))
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == secrets["AWS_SECRET_ACCESS_KEY"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == secrets["POSTGRES_PASSWORD"]
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == secrets["MLFLOW_TRACKING_PASSWORD"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql://{secrets['POSTGRES_USER']}:{secrets['POSTGRES_PASSWORD']}@postgres:5432/"
        f"{secrets['POSTGRES_DB']}")
    assert services["train"]["environment"]["AWS_SECRET_ACCESS_KEY"] == secrets["AWS_SECRET_ACCESS_KEY"]
    # Relative paths still resolve against docker/, where the compose file is.
    assert services["mlflow"]["build"]["context"] == str(project / "docker")
    assert services["train"]["build"]["context"] == str(project)

    before = config("-f", "docker/compose.yaml")  # the command the project used to give
    assert before.returncode != 0
    assert re.search(r"required variable \w+ is missing a value: set in \.env", before.stderr), before.stderr
