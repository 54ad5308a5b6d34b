"""Bring your own model (issue #12): a model is model.py alone plus the settings it declares, and
the split is the config's to choose. The generated project's own tests run the README's worked
example for each framework; the slow test swaps in the scikit-learn example (no epochs, no
probabilities, no MLflow flavor) with an unshuffled split of a fixed size and runs the pipeline."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Project, generate, make_env


@pytest.fixture(scope="module")
def sklearn_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    tmp = tmp_path_factory.mktemp("byo")
    return generate(tmp, "p", make_env(tmp), "framework=sklearn")


def readme_example(project: Project) -> tuple[str, dict[str, object]]:
    """The worked example of the README: model.py's code and the model: section."""
    section = (project.path / "README.md").read_text().split("## Bring your own model", 1)[1]
    section = section.split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (settings,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    return code, yaml.safe_load(settings)


@pytest.mark.parametrize("framework", ["sklearn", "pytorch"])
def test_generated_tests_run_the_readme_example(framework: str, sklearn_project: Project,
                                                tmp_path: Path) -> None:
    """For scikit-learn a LinearSVC (no partial_fit, no predict_proba); for PyTorch another
    architecture: the generated project's tests take each from its README and run it."""
    project = sklearn_project if framework == "sklearn" else generate(
        tmp_path, "p", make_env(tmp_path), f"framework={framework}")
    readme = (project.path / "README.md").read_text()
    assert "## Bring your own model" in readme
    assert ("LinearSVC" in readme) == (framework == "sklearn")
    assert ("class WideNet" in readme) == (framework == "pytorch")
    proc = project.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "tests/test_model_contract.py", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = int(re.search(r"(\d+) passed", proc.stdout).group(1))
    assert passed >= 15 and "skipped" not in proc.stdout


def test_config_check_reads_the_model_schema_without_importing_it(sklearn_project: Project) -> None:
    """The config check parses model.py's CONFIG_SCHEMA literal: a model.py that cannot even be
    imported here still gets its settings checked, in one line."""
    project = sklearn_project
    model = project.path / "src/digits_repro/model.py"
    original = model.read_text()
    try:
        model.write_text("import not_installed_anywhere\n" + original)
        project.set_config("model.epochs", 0)
        proc = project.run("python", "workflow/scripts/train.py", check=False)
        assert proc.returncode != 0 and proc.stderr.strip() == (
            "config/config.yaml: model.epochs: 0 is less than the minimum of 1")
    finally:
        model.write_text(original)
        project.run("git", "checkout", "--", "config/config.yaml")


@pytest.mark.slow
def test_model_without_epochs_or_probabilities_and_an_unshuffled_split(sklearn_project: Project) -> None:
    project = sklearn_project
    code, settings = readme_example(project)
    (project.path / "src/digits_repro/model.py").write_text(code)
    config = project.config
    config["model"] = settings["model"]
    config["prepare"] = {"shuffle": False, "stratify": False, "test_size": 400}
    (project.path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    project.snakemake()

    # The split: the first rows train, exactly 400 test, in the table's order.
    (table,) = (project.path / "data/raw").glob("*.csv")
    with table.open() as handle:
        rows = [[float(v) for v in row[:-1]] for row in list(csv.reader(handle))[1:]]
    x_train = np.load(project.path / "data/prepared/x_train.npy")
    x_test = np.load(project.path / "data/prepared/x_test.npy")
    assert len(x_test) == 400 and len(x_train) == len(rows) - 400
    assert (x_train == np.array(rows[:len(x_train)], dtype=np.float32)).all()
    assert (x_test == np.array(rows[len(x_train):], dtype=np.float32)).all()
    split = project.json("data/prepared/meta.json")["split"]
    assert split == {"mode": "random", "shuffle": False, "stratify": False, "test_size": 400,
                     "n_train": len(rows) - 400, "n_test": 400}

    # Evaluation from predict only; no history, so no epoch metrics and no curve, and no failure.
    metrics = project.json("results/metrics.json")
    assert set(metrics) == {"accuracy", "f1_macro", "n_test"} and metrics["n_test"] == 400
    assert project.json("results/history.json") == []
    run_id = project.json("results/run.json")["run_id"]
    latest = dict(project.sql("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", run_id))
    assert set(latest) == {"accuracy", "f1_macro", "n_test"}
    assert latest["accuracy"] == pytest.approx(metrics["accuracy"], abs=0)
    params = dict(project.sql("SELECT key, value FROM params WHERE run_uuid = ?", run_id))
    assert params["model.C"] == str(settings["model"]["C"])
    assert not any(key.startswith("model.") and key != "model.C" for key in params)
    assert (params["prepare.shuffle"], params["prepare.stratify"], params["prepare.test_size"]) == (
        "False", "False", "400")
    # No MLflow flavor: the saved file is the run's logged model, READY.
    from mlflow.entities import LoggedModelStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project.path / 'mlruns.db'}")
    (experiment,) = project.sql("SELECT experiment_id FROM runs WHERE run_uuid = ?", run_id)[0]
    (logged,) = [m for m in client.search_logged_models(experiment_ids=[str(experiment)])
                 if m.source_run_id == run_id]
    assert logged.status == LoggedModelStatus.READY
    assert "model.joblib" in {f.path for f in client.list_logged_model_artifacts(logged.model_id)}
    verify = project.json("results/verify.json")
    assert verify["status"] == "no-reference"
    assert (project.path / "results/curves.png").stat().st_size > 0
