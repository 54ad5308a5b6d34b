"""A configuration that cannot lie: unknown, misspelt, contradictory or overridden settings are
refused in one line by both front ends before anything runs, and MLflow records what the run used.

One sklearn project is generated per module; each test edits config/config.yaml and the fixture
puts it back. Nothing here runs the pipeline except the test marked slow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Project, generate, make_env

Edit = Callable[[dict[str, Any]], None]
OUTPUTS = ("results", "data", "models", "mlruns.db", "mlartifacts", "dvc.lock")
# Bookkeeping of the tools themselves, not outputs of the pipeline.
# The tools' own records: git, Snakemake and DVC state, and logs/ (a refused step's log says why).
TOOL_STATE = ((".git",), (".snakemake",), (".dvc", "tmp"), ("logs",))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Project:
    tmp = tmp_path_factory.mktemp("strict")
    return generate(tmp, "p", make_env(tmp), "framework=sklearn")


@pytest.fixture
def project(generated: Project) -> Iterator[Project]:
    """The module's project with its committed config/config.yaml back after each test."""
    yield generated
    generated.run("git", "checkout", "--", "config/config.yaml")


def edit_config(project: Project, change: Edit) -> None:
    config = project.config
    change(config)
    (project.path / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def tree(project: Project) -> dict[str, tuple[int, int]]:
    """Every file but the tools' own state, with its size and modification time."""
    files = {}
    for path in project.path.rglob("*"):
        rel = path.relative_to(project.path)
        if path.is_file() and not any(rel.parts[:len(state)] == state for state in TOOL_STATE):
            files[rel.as_posix()] = (path.stat().st_size, path.stat().st_mtime_ns)
    return files


def refused(project: Project, *cmd: str) -> str:
    """Run a front end that must refuse; return its one stderr line, checking nothing ran."""
    before = tree(project)
    proc = project.run(*cmd, check=False)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert tree(project) == before, "a refused run must create or change nothing"
    assert not any((project.path / name).exists() for name in OUTPUTS)
    lines = proc.stderr.strip().splitlines()
    if cmd[0] == "dvc":  # DVC adds its own line naming the stage whose command failed
        lines = [line for line in lines if not line.startswith("ERROR: failed to reproduce")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def add(dotted: str, value: Any) -> Edit:
    def change(config: dict[str, Any]) -> None:
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value

    return change


MISSPELT = [
    (add("model.epoch", 3), "config/config.yaml: model.epoch: not read by this project's model "
     "(src/digits_repro/model.py, CONFIG_SCHEMA); did you mean model.epochs?"),
    (add("tracking.mod", "server"),
     "config/config.yaml: tracking.mod: unknown key; did you mean tracking.mode?"),
    (add("seedd", 7), "config/config.yaml: seedd: unknown key; did you mean seed?"),
]


@pytest.mark.parametrize(("change", "line"), MISSPELT, ids=["model.epoch", "tracking.mod", "seedd"])
def test_misspelt_key_is_one_line_from_snakemake(project: Project, change: Edit, line: str) -> None:
    edit_config(project, change)
    assert refused(project, "snakemake", "--cores", "all") == line


@pytest.mark.parametrize(("change", "line"), MISSPELT, ids=["model.epoch", "tracking.mod", "seedd"])
def test_misspelt_key_is_one_line_from_dvc_repro(project: Project, change: Edit, line: str) -> None:
    edit_config(project, change)
    assert refused(project, "dvc", "repro") == line
    # The step scripts are what DVC runs: each one refuses the same way, alone.
    assert refused(project, "python", "workflow/scripts/train.py") == line


def test_key_with_no_near_match_lists_what_is_accepted(project: Project) -> None:
    edit_config(project, add("storage.colour", "blue"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: storage.colour: unknown key; "
        "accepted: artifacts_bucket, bucket, endpoint, mode, public_url")


def test_value_error_is_one_line_naming_the_field(project: Project) -> None:
    """Snakemake's own validation printed seven lines here, naming the field only at the end."""
    edit_config(project, add("seed", "x"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: seed: 'x' is not of type 'integer'")
    edit_config(project, add("seed", -1))
    line = "config/config.yaml: seed: -1 is less than the minimum of 0"
    assert refused(project, "snakemake", "--cores", "all") == line
    assert refused(project, "python", "workflow/scripts/prepare.py") == line


def test_missing_key_is_named_by_its_dotted_path(project: Project) -> None:
    edit_config(project, lambda config: config["model"].pop("epochs"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: model.epochs: missing; this key is required")


def test_unparsable_yaml_is_one_line(project: Project) -> None:
    with (project.path / "config" / "config.yaml").open("a") as handle:
        handle.write("seed: [\n")
    line = refused(project, "snakemake", "--cores", "all")
    assert line.startswith("config/config.yaml: not valid YAML at line "), line


def test_framework_that_contradicts_the_project_is_refused(project: Project) -> None:
    edit_config(project, add("train.framework", "pytorch"))
    line = ("config/config.yaml: train.framework: 'pytorch' contradicts this project, whose model "
            "(src/digits_repro/model.py) is sklearn; accepted: sklearn")
    assert refused(project, "snakemake", "--cores", "all") == line
    assert refused(project, "dvc", "repro") == line


def test_setting_the_model_does_not_read_is_refused(project: Project) -> None:
    """batch_size is a setting of the PyTorch model: in this scikit-learn project it would be
    recorded, not used. The model's CONFIG_SCHEMA says which keys it reads."""
    edit_config(project, add("model.batch_size", 32))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: model.batch_size: not read by this project's model "
        "(src/digits_repro/model.py, CONFIG_SCHEMA); accepted: alpha, epochs, learning_rate")


def test_framework_setting_of_another_framework_is_refused(project: Project) -> None:
    edit_config(project, add("train.device", "cpu"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: train.device: not read when train.framework is sklearn; accepted: framework")


def test_model_setting_under_train_points_to_the_model_section(project: Project) -> None:
    """A config written before the model: section existed."""
    edit_config(project, add("train.epochs", 30))
    assert refused(project, "dvc", "repro") == (
        "config/config.yaml: train.epochs: unknown key; did you mean model.epochs? (the model's "
        "settings live in the model: section)")


def test_split_options_that_contradict_each_other_are_refused(project: Project) -> None:
    edit_config(project, add("prepare.shuffle", False))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: prepare.stratify: true needs prepare.shuffle: true (an unshuffled split "
        "takes the last rows as they are); accepted: stratify: false with shuffle: false")
    edit_config(project, add("prepare.test_file", "tables/test.csv"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: prepare.shuffle: not read when prepare.test_file is set; "
        "accepted: test_file, test_sha256")


def test_key_of_another_data_source_is_refused(project: Project) -> None:
    edit_config(project, add("data.url", "https://example.org/t.csv"))
    assert refused(project, "snakemake", "--cores", "all") == (
        "config/config.yaml: data.url: not read when data.source is sample; accepted: source, target")


def test_command_line_override_is_refused_in_one_line(project: Project) -> None:
    """The steps read config/config.yaml (and dvc.lock records it): `--config seed=7` would be
    Snakemake's record of a split that was made with seed 42."""
    line = refused(project, "snakemake", "--cores", "all", "--config", "seed=7")
    assert line.startswith("snakemake --config/--configfile: seed=7 would not reach the steps"), line
    assert "config/config.yaml" in line
    override = project.path.parent / "override.yaml"
    override.write_text("model:\n  epochs: 3\n")
    line = refused(project, "snakemake", "--cores", "all", "--configfile", str(override))
    assert line.startswith("snakemake --config/--configfile: model.epochs=3 would not reach"), line


def test_override_equal_to_the_file_changes_nothing_and_is_accepted(project: Project) -> None:
    dry = project.snakemake("-n", "--config", f"seed={project.config['seed']}")
    assert "prepare" in dry.stdout


def test_misspelt_tolerance_is_refused_by_verify(project: Project) -> None:
    """Metric names come from evaluate.py, so the verify step checks them (one line)."""
    code = ("import sys; sys.path[:0] = ['src']; from digits_repro import verify; "
            "verify.check_tolerance_names({'verify': {'tolerance': {'acuracy': 0.1}}}, "
            "{'accuracy': 1.0, 'log_loss': 0.1})")
    proc = project.run("python", "-c", code, check=False)
    assert proc.returncode != 0 and proc.stderr.strip() == (
        "config/config.yaml: verify.tolerance.acuracy: not a metric of this project "
        "(results/metrics.json); did you mean verify.tolerance.accuracy?")


PARAMS = ("import json, sys; sys.path[:0] = ['src', 'workflow/scripts']; import _step; "
          "from digits_repro import tracking; "
          "print(json.dumps(tracking.flatten(tracking.run_params(_step.load_config()))))")


def test_params_are_what_the_run_uses_with_the_models_defaults(project: Project) -> None:
    edit_config(project, lambda config: config["model"].pop("alpha"))
    edit_config(project, lambda config: config["prepare"].pop("shuffle"))
    params = json.loads(project.run("python", "-c", PARAMS).stdout)
    assert params == {
        "seed": "42", "data.source": "sample", "data.target": "label", "prepare.test_size": "0.25",
        "prepare.shuffle": "True",  # the split's default, which prepare used
        "prepare.stratify": "True", "train.framework": "sklearn", "model.epochs": "30",
        "model.learning_rate": "0.01",
        "model.alpha": "0.0001",  # the model's default (CONFIG_SCHEMA), which fit() used
    }


@pytest.mark.slow
def test_mlflow_records_the_params_the_run_used(tmp_path: Path) -> None:
    """Only the settings the steps read, each as used: a default the model applied included, and
    nothing of storage, verify or chameleon, which no step of the run reads."""
    project = generate(tmp_path, "p", make_env(tmp_path), "framework=sklearn")
    edit_config(project, lambda config: config["model"].update(epochs=3, learning_rate=0.02))
    edit_config(project, lambda config: config["model"].pop("alpha"))
    project.snakemake()
    run_id = project.json("results/run.json")["run_id"]
    params = dict(project.sql("SELECT key, value FROM params WHERE run_uuid = ?", run_id))
    assert params == {
        "seed": "42", "data.source": "sample", "data.target": "label", "prepare.test_size": "0.25",
        "prepare.shuffle": "True", "prepare.stratify": "True", "train.framework": "sklearn",
        "model.epochs": "3", "model.learning_rate": "0.02", "model.alpha": "0.0001",
        "tracking.mode": "local",
    }
    assert len(project.json("results/history.json")) == 3
