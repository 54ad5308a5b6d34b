"""Rendering: what a generated project contains for each answer, and its git/DVC/MLflow set-up."""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import ROOT, Project, generate, make_env, reprostack, run

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def default_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    tmp = tmp_path_factory.mktemp("render")
    return generate(tmp, "digits", make_env(tmp))


def test_layout_reads_like_the_lifecycle(default_project: Project) -> None:
    p = default_project.path
    for rel in (
        "README.md", "config/config.yaml", "dvc.yaml", "requirements.lock", "requirements-torch-cpu.lock",
        "requirements-torch-cuda.lock",
        "workflow/Snakefile", "workflow/schemas/config.schema.json", ".gitignore", ".dvcignore",
        "workflow/rules/environment.smk", "workflow/rules/data.smk", "workflow/rules/train.smk",
        "workflow/rules/track.smk", "workflow/rules/verify.smk", "reference/README.md",
        "src/digits_repro/model.py", "src/digits_repro/verify.py", "src/digits_repro/provenance.py",
        "tests/test_project.py", ".copier-answers.yml",
    ):
        assert (p / rel).is_file(), rel
    assert not (p / "workflow").is_symlink(), "the workflow must be copied, not linked"
    assert "import torch" in (p / "src/digits_repro/model.py").read_text()


def test_config_validates_against_the_schema(default_project: Project) -> None:
    schema = json.loads((default_project.path / "workflow/schemas/config.schema.json").read_text())
    config = default_project.config
    jsonschema.validate(config, schema)
    assert config["seed"] == 42 and config["data"]["source"] == "sample"
    assert config["tracking"] == {"mode": "local", "uri": "sqlite:///mlruns.db",
                                  "server_uri": "http://127.0.0.1:5000",
                                  "artifacts": "mlartifacts", "experiment": "digits-repro"}
    assert config["storage"]["mode"] == "local"


def test_answers_file_allows_updates(default_project: Project) -> None:
    text = (default_project.path / ".copier-answers.yml").read_text()
    answers = yaml.safe_load(text)
    # Rendered from the checkout, but recorded by the canonical URL: no local path (see
    # tests/test_template_source.py for updates from a URL template).
    assert answers["_src_path"] == "https://github.com/reprostack/reprostack.git"
    assert answers["_commit"] and str(ROOT) not in text
    assert answers["framework"] == "pytorch" and answers["project_name"] == "digits-repro"
    assert "package" not in answers  # derived, not asked


def test_secrets_are_random_private_and_untracked(default_project: Project, tmp_path: Path) -> None:
    env_file = default_project.path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    # S3 keys join the DVC remote here later (storage.mode s3); DVC keeps the file's mode.
    assert (default_project.path / ".dvc" / "config.local").stat().st_mode & 0o777 == 0o600
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert len(values["POSTGRES_PASSWORD"]) >= 24 and len(values["AWS_SECRET_ACCESS_KEY"]) >= 30
    tracked = run(["git", "ls-files"], default_project.path, default_project.env).stdout.split()
    assert ".env" not in tracked
    answers = (default_project.path / ".copier-answers.yml").read_text()
    history = run(["git", "log", "-p", "--all"], default_project.path, default_project.env).stdout
    for secret in values.values():
        if len(secret) > 12:
            assert secret not in answers and secret not in history
    other = generate(tmp_path, "other", default_project.env)
    assert (other.path / ".env").read_text() != env_file.read_text()


def _lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) for each requirement of a pip lock file."""
    entries = {}
    for block in re.split(r"\n(?=\S)", text):
        pin = re.match(r"([A-Za-z0-9._-]+)==(\S+)", block)
        if pin:
            entries[pin.group(1).lower()] = (pin.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return entries


def _local_wheel(filename: str) -> Path | None:
    """The wheel in pip's find-links folders (this machine's CPU torch), if there is one."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders = [*re.findall(r"find-links='([^']+)'", listed.stdout), os.environ.get("PIP_FIND_LINKS", "")]
    for folder in folders:
        for candidate in folder.split():
            wheel = Path(candidate.removeprefix("file://")) / filename
            if wheel.is_file():
                return wheel
    return None


def test_torch_is_locked_with_hashes_per_accelerator(default_project: Project) -> None:
    locks = {acc: _lock_entries((default_project.path / f"requirements-torch-{acc}.lock").read_text())
             for acc in ("cpu", "cuda")}
    for acc, entries in locks.items():
        assert entries and all(hashes for _, hashes in entries.values()), f"{acc}: a pin without a hash"
        assert entries["torch"][0] == {"cpu": "2.13.0+cpu", "cuda": "2.13.0"}[acc]
    assert any(name.startswith("nvidia-") for name in locks["cuda"]), "the CUDA runtime is locked too"
    # torch's dependencies agree with requirements.lock, which installs them first.
    project_lock = _lock_entries((default_project.path / "requirements.lock").read_text())
    for name, (version, _) in {**locks["cpu"], **locks["cuda"]}.items():
        assert project_lock.get(name, (version,))[0] == version, name
    # The CPU lock is what this environment installed (Makefile), and its hash is that wheel's.
    assert metadata.version("torch") == locks["cpu"]["torch"][0]
    wheel = _local_wheel(f"torch-{locks['cpu']['torch'][0]}-cp311-cp311-manylinux_2_28_x86_64.whl")
    if wheel is None:
        pytest.skip("no local CPU torch wheel in pip's find-links to compare the hash with")
    digest = hashlib.sha256()
    with wheel.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    assert digest.hexdigest() in locks["cpu"]["torch"][1]


def test_git_dvc_and_mlflow_need_no_server(default_project: Project) -> None:
    p = default_project.path
    log = run(["git", "log", "--format=%s"], p, default_project.env).stdout.split("\n")
    assert log[0] == "Generated by reprostack"
    assert run(["git", "status", "--porcelain"], p, default_project.env).stdout == ""
    tracked = run(["git", "ls-files"], p, default_project.env).stdout.split()
    assert ".dvc/config" in tracked and "dvc.yaml" in tracked
    remote = run(["dvc", "remote", "list"], p, default_project.env).stdout.split()
    assert remote == ["local", str(p.parent / "digits-dvc-remote"), "(default)"]
    # The folder remote is this machine's, so it lives in .dvc/config.local (never committed): a
    # clone elsewhere does not inherit a path that means nothing there.
    assert "remote" not in (p / ".dvc" / "config").read_text()
    assert ".dvc/config.local" not in tracked
    ignored = (p / ".gitignore").read_text()
    assert "/mlruns.db" in ignored and "/mlartifacts/" in ignored


def test_sklearn_variant(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "sk", env, "framework=sklearn", "project_name=sk-paper")
    model = (project.path / "src/sk_paper/model.py").read_text()
    assert "SGDClassifier" in model and "torch" not in model
    assert not list(project.path.glob("requirements-torch*"))
    assert "requirements-torch" not in (project.path / "dvc.yaml").read_text()
    assert project.config["train"]["framework"] == "sklearn"


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["data_source=huggingface", "hf_repo_id=acme/digits", f"hf_revision={SHA}", "data_file=t.csv"],
         {"source": "huggingface", "repo_id": "acme/digits", "revision": SHA, "file": "t.csv"}),
        (["data_source=git", "git_url=https://example.org/d.git", f"git_commit={SHA}"],
         {"source": "git", "repo": "https://example.org/d.git", "commit": SHA, "file": "data.csv"}),
        (["data_source=url", "data_url=https://example.org/d.csv", "data_sha256=" + "AB" * 32],
         {"source": "url", "url": "https://example.org/d.csv", "sha256": "ab" * 32}),
    ],
)
def test_data_sources_are_pinned_in_config(
    tmp_path: Path, env: dict[str, str], answers: list[str], expected: dict[str, str]
) -> None:
    project = generate(tmp_path, "p", env, *answers, "data_target=y")
    data = project.config["data"]
    assert {k: data[k] for k in expected} == expected
    assert data["target"] == "y"


def test_answers_file_and_data_override(tmp_path: Path, env: dict[str, str]) -> None:
    answers = tmp_path / "answers.yml"
    answers.write_text("project_name: from-file\nframework: sklearn\nseed: 7\n_commit: abc\n")
    reprostack(["new", str(tmp_path / "p"), "--answers", str(answers), "--data", "seed=9"], env)
    config = yaml.safe_load((tmp_path / "p/config/config.yaml").read_text())
    assert config["project"]["name"] == "from-file"
    assert config["train"]["framework"] == "sklearn"
    assert config["seed"] == 9


def test_custom_dvc_remote(tmp_path: Path, env: dict[str, str]) -> None:
    remote = tmp_path / "elsewhere" / "remote"
    reprostack(["new", str(tmp_path / "p"), "--defaults", "--dvc-remote", str(remote)], env)
    url = run(["dvc", "remote", "list"], tmp_path / "p", env).stdout.split()[1]
    assert (tmp_path / "p" / ".dvc" / url).resolve() == remote


def test_check_pipeline_names_the_stage_that_disagrees(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env)
    check = [sys.executable, "workflow/scripts/check_pipeline.py"]
    assert run(check, project.path, env).returncode == 0
    dvc_yaml = project.path / "dvc.yaml"
    original = yaml.safe_load(dvc_yaml.read_text())

    def with_change(change) -> subprocess.CompletedProcess[str]:
        stages = yaml.safe_load(yaml.safe_dump(original))
        change(stages["stages"])
        dvc_yaml.write_text(yaml.safe_dump(stages))
        return run(check, project.path, env, check=False)

    missing = with_change(lambda s: s.pop("evaluate"))
    assert missing.returncode == 1 and "stage 'evaluate'" in missing.stderr
    other_cmd = with_change(lambda s: s["train"].update(cmd="python other.py"))
    assert "stage 'train': cmd differ" in other_cmd.stderr
    extra_dep = with_change(lambda s: s["prepare"]["deps"].append("extra.csv"))
    assert "stage 'prepare': deps differ" in extra_dep.stderr and "extra.csv" in extra_dep.stderr
    params = with_change(lambda s: s["train"]["params"][0]["config/config.yaml"].remove("seed"))
    assert "stage 'train': params differ" in params.stderr


def test_force_replaces_scratch_inside_a_checkout_but_never_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo` twice: --force may replace build/example inside the template checkout (git
    ignores it), never the template's own folders, the checkout, or a folder holding it."""
    import importlib

    gen = importlib.import_module("reprostack.generate")
    checkout = tmp_path / "checkout"
    (checkout / "templates" / "project").mkdir(parents=True)
    (checkout / "build" / "example").mkdir(parents=True)
    (checkout / "build" / "example" / ".copier-answers.yml").write_text("_src_path: .\n")
    (checkout / ".venv").mkdir()
    (checkout / ".gitignore").write_text("/build/\n/.venv/\n")
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    monkeypatch.setattr(gen, "template_root", lambda: checkout)
    monkeypatch.chdir("/")
    assert gen._irreplaceable((checkout / "build" / "example").resolve()) is None
    for kept in ("templates/project", ".venv"):  # the template's files; ignored, but not a project
        inside = gen._irreplaceable((checkout / kept).resolve())
        assert inside is not None and "inside the reprostack template" in inside
    assert "holding it" in gen._irreplaceable(checkout.resolve())
    assert "holding it" in gen._irreplaceable(tmp_path.resolve())
