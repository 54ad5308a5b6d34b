"""A generated project is a real repository: installable, with CI, pre-commit, a re-lock command
that needs no reprostack, a LICENSE and a CITATION.cff from the answers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import Project, generate, make_env, run
from reprostack.generate import render

SHA_PINNED = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    tmp = tmp_path_factory.mktemp("repo")
    return generate(tmp, "paper", make_env(tmp), "project_name=paper", "author=Jane Q. Doe",
                    "author_email=jane@example.org",
                    "author_affiliation=University of Somewhere", "license=Apache-2.0", "copyright_year=2024")


def test_pyproject_builds_an_installable_package(project: Project, tmp_path: Path) -> None:
    meta = tomllib.loads((project.path / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert meta["project"]["license"] == "Apache-2.0"
    assert meta["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.in"]}
    # The wheel (built offline, with the setuptools of the locked environment) holds the package,
    # and its dependencies are requirements.in's, the one list of them.
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(project.path)], tmp_path, project.env)
    wheel = next(tmp_path.glob("paper-0.1.0-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "digits_repro/__init__.py" not in names and "paper/__init__.py" in names
    assert "paper/model.py" in names and not any(n.startswith(("tests/", "workflow/")) for n in names)
    required = [line.split(": ", 1)[1] for line in metadata.splitlines()
                if line.startswith("Requires-Dist")]
    listed = (project.path / "requirements.in").read_text().splitlines()
    wanted = [line.split("#")[0].strip() for line in listed]
    assert _requirements(required) == _requirements(w for w in wanted if w)
    # An editable install makes `import paper` work from anywhere, no sys.path edits.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, project.env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this venv's packages
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(project.path)],
        tmp_path, project.env)
    where = run([python, "-c", "import paper.data; print(paper.data.__file__)"], tmp_path, project.env).stdout
    assert Path(where.strip()) == project.path / "src" / "paper" / "data.py"
    assert run(["git", "status", "--porcelain"], project.path, project.env).stdout == ""


def _requirements(lines) -> set[tuple[str, str, str]]:
    from packaging.requirements import Requirement

    parsed = [Requirement(line) for line in lines]
    return {(r.name.lower(), ",".join(sorted(str(s) for s in r.specifier)), ",".join(sorted(r.extras)))
            for r in parsed}


def test_ci_workflow_runs_lint_tests_check_and_a_tiny_pipeline(project: Project) -> None:
    workflow = yaml.safe_load((project.path / ".github/workflows/ci.yml").read_text())
    steps = workflow["jobs"]["check"]["steps"]
    uses = [step["uses"] for step in steps if "uses" in step]
    assert uses and all(SHA_PINNED.match(action) for action in uses), uses
    script = "\n".join(step.get("run", "") for step in steps)
    for command in ("pre-commit run --all-files", "pip install --require-hashes -r requirements.lock",
                    "requirements-torch-cpu.lock", "pip install --no-deps --no-build-isolation -e .",
                    "pytest", "python workflow/scripts/check_pipeline.py", "snakemake --cores all track"):
        assert command in script, command
    # The tiny-config step: the strict config accepts its edit, and Snakemake plans the run.
    tiny = next(step for step in steps if "tiny" in step.get("name", ""))
    edit = next(line for line in tiny["run"].splitlines() if line.startswith("python -c"))
    copy = project.copy_to(project.path.parent / "ci-copy")
    copy.run("bash", "-c", edit)
    epochs = [s["epochs"] for s in copy.config.values() if isinstance(s, dict) and "epochs" in s]
    assert epochs and set(epochs) == {2}
    plan = copy.snakemake("-n", "track").stdout
    assert "rule train:" in plan and "rule verify:" not in plan


def test_sklearn_ci_installs_no_torch(tmp_path: Path) -> None:
    render(tmp_path / "p", {"framework": "sklearn", "project_name": "sk"}, defaults=True)
    script = (tmp_path / "p/.github/workflows/ci.yml").read_text()
    assert "torch" not in script and "pytest" in script


def test_pre_commit_runs_ruff_and_snakefmt_at_pinned_revisions(project: Project) -> None:
    config = yaml.safe_load((project.path / ".pre-commit-config.yaml").read_text())
    hooks = {repo["repo"].rsplit("/", 1)[1]: (repo["rev"], [h["id"] for h in repo["hooks"]])
             for repo in config["repos"]}
    assert hooks["ruff-pre-commit"][1] == ["ruff"] and hooks["snakefmt"][1] == ["snakefmt"]
    assert all(re.match(r"^v\d+\.\d+\.\d+$", rev) for rev, _ in hooks.values())
    # The project lints clean with its own ruff settings.
    assert run(["ruff", "check", "."], project.path, project.env, check=False).returncode == 0


@pytest.mark.parametrize(("license_", "text"), [("MIT", "MIT License"), ("Apache-2.0", "Apache License"),
                                                 ("BSD-3-Clause", "BSD 3-Clause License")])
def test_license_from_the_answers(tmp_path: Path, license_: str, text: str) -> None:
    render(tmp_path / "p", {"license": license_, "author": "Ann Lee", "copyright_year": 2023,
                            "framework": "sklearn"}, defaults=True)
    body = (tmp_path / "p/LICENSE").read_text()
    assert body.startswith(text) or text in body[:200]
    assert re.search(r"Copyright (\(c\) )?2023,? Ann Lee", body)
    assert "{{" not in body and "[yyyy]" not in body
    cff = yaml.safe_load((tmp_path / "p/CITATION.cff").read_text())
    assert cff["license"] == license_


def test_citation_cff_names_the_author(project: Project) -> None:
    cff = yaml.safe_load((project.path / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors"):  # required by CFF 1.2.0
        assert cff[key], key
    assert cff["cff-version"] == "1.2.0" and cff["title"] == "paper"
    assert cff["authors"] == [{"given-names": "Jane Q.", "family-names": "Doe", "email": "jane@example.org",
                               "affiliation": "University of Somewhere"}]
    assert cff["version"] == "0.1.0" and cff["license"] == "Apache-2.0"


def test_single_name_author_is_an_entity(tmp_path: Path) -> None:
    render(tmp_path / "p", {"author": "Collective", "author_affiliation": "Lab", "framework": "sklearn"},
           defaults=True)
    assert yaml.safe_load((tmp_path / "p/CITATION.cff").read_text())["authors"] == [{"name": "Collective"}]


def test_relock_needs_no_reprostack(project: Project) -> None:
    dry = project.run(sys.executable, "workflow/scripts/relock.py", "--dry-run").stdout.splitlines()
    assert dry[0].startswith("uv pip compile") and "requirements.in -o requirements.lock" in dry[0]
    assert "--generate-hashes" in dry[0]
    assert any("torch==2.13.0+cpu" in line and "requirements-torch-cpu.lock" in line for line in dry)
    assert any("torch==2.13.0 |" in line and "requirements-torch-cuda.lock" in line for line in dry)
    helped = project.run(sys.executable, "workflow/scripts/relock.py", "--help").stdout
    assert "--upgrade" in helped


def _pins(text: str) -> dict[str, tuple[str, list[str]]]:
    entries = {}
    for block in re.split(r"\n(?=\S)", text):
        if pin := re.match(r"([A-Za-z0-9._-]+)==(\S+)", block):
            hashes = sorted(re.findall(r"sha256:([0-9a-f]{64})", block))
            entries[pin.group(1).lower()] = (pin.group(2), hashes)
    return entries


def test_relock_with_unchanged_inputs_keeps_every_pin(tmp_path: Path) -> None:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
    except OSError:
        pytest.skip("PyPI is not reachable")
    render(tmp_path / "p", {"framework": "sklearn"}, defaults=True)
    lock = tmp_path / "p" / "requirements.lock"
    before = _pins(lock.read_text())
    proc = subprocess.run([sys.executable, "workflow/scripts/relock.py"], cwd=tmp_path / "p",
                          env=make_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _pins(lock.read_text()) == before


def test_project_tests_pass_and_can_fail(project: Project) -> None:
    pytest_ = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    passed = project.run(*pytest_, check=False)
    assert passed.returncode == 0, passed.stdout[-3000:]
    broken = project.copy_to(project.path.parent / "broken-config")
    broken.set_config("model.epochs", 0)
    failed = broken.run(*pytest_, check=False)
    assert failed.returncode != 0 and "model.epochs" in failed.stdout + failed.stderr
