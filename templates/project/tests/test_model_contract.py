"""The model contract (src/<package>/contract.py), the worked example of README.md's "Bring your
own model", the config check and the split options: fast, on tiny data, without the pipeline."""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

import _step  # noqa: E402

CONFIG = _step.load_config()
PKG = CONFIG["project"]["package"]
package = importlib.import_module(PKG)
contract = importlib.import_module(f"{PKG}.contract")
data = importlib.import_module(f"{PKG}.data")
SHIPPED = ROOT / "src" / PKG / "model.py"


def readme_blocks(language: str) -> list[str]:
    """The code blocks of README.md's "Bring your own model" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def example_source() -> str:
    """model.py as the README's worked example makes it: a whole file, or the shipped one with
    everything from CONFIG_SCHEMA to the end of build() replaced."""
    (code,) = readme_blocks("python")
    if "FRAMEWORK = " in code:
        return code
    shipped = SHIPPED.read_text()
    start = shipped.index("CONFIG_SCHEMA = {")
    end = shipped.index("\n\n\ndef ", shipped.index("def build("))
    return shipped[:start] + code.rstrip("\n") + shipped[end:]


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture
def example(tmp_path: Path) -> ModuleType:
    path = tmp_path / "example_model.py"
    path.write_text(example_source())
    return load_module(path, f"{PKG}_example_model")


def example_config() -> dict[str, Any]:
    """config/config.yaml with the model: section the README gives for the example."""
    config = copy.deepcopy(CONFIG)
    blocks = readme_blocks("yaml")
    if blocks:
        import yaml

        config["model"] = yaml.safe_load(blocks[0])["model"]
    else:  # the PyTorch example adds one key
        config["model"] = dict(config["model"], dropout=0.2)
    if config["train"]["framework"] == "pytorch":
        config["train"] = dict(config["train"], device="cpu")
    return config


def tiny(n: int = 60, features: int = 5, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.arange(n) % classes
    x = (rng.normal(0, 1, (n, features)) + y[:, None] * 2).astype(np.float32)
    return x, y.astype(np.int64)


@pytest.mark.parametrize("which", ["shipped", "example"])
def test_model_keeps_the_contract(which: str, example: ModuleType, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """fit, predict, save/load and evaluate, for the shipped model and the README's example."""
    model = importlib.import_module(f"{PKG}.model") if which == "shipped" else example
    contract.check(model)
    config = example_config() if which == "example" else copy.deepcopy(CONFIG)
    if config["train"]["framework"] == "pytorch":
        config["train"] = dict(config["train"], device="cpu")
    params = dict(contract.params(model, config))
    if "epochs" in params:
        params["epochs"] = 2
    x, y = tiny()
    if hasattr(model, "seed"):
        model.seed(0)
    fitted, history = model.fit(x, y, 3, params, 0, config["train"])
    assert isinstance(history, list) and all("epoch" in row for row in history)
    predicted = np.asarray(model.predict(fitted, x))
    assert predicted.shape == (len(y),) and set(predicted.tolist()) <= {0, 1, 2}
    model.save(fitted, tmp_path / model.FILENAME)
    again = model.load(tmp_path / model.FILENAME)
    assert (np.asarray(model.predict(again, x)) == predicted).all()
    runtime = contract.runtime(model, config["train"])
    assert {"framework", "device", "device_name", "precision"} <= set(runtime)

    # evaluate.py scores whatever model.py is: accuracy from predict, log_loss only with probabilities
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for part in ("train", "test"):
        np.save(prepared / f"x_{part}.npy", x)
        np.save(prepared / f"y_{part}.npy", y)
    (prepared / "meta.json").write_text(json.dumps({"features": list("abcde"), "classes": ["a", "b", "c"]}))
    monkeypatch.setattr(package, "model", model)
    monkeypatch.setitem(sys.modules, f"{PKG}.model", model)
    evaluate = importlib.import_module(f"{PKG}.evaluate")
    metrics = evaluate.evaluate(tmp_path, prepared)
    assert metrics["accuracy"] == pytest.approx(float((predicted == y).mean()))
    assert ("log_loss" in metrics) == hasattr(model, "predict_proba")
    assert set(metrics) <= set(evaluate.METRICS)


def test_example_is_what_the_readme_says(example: ModuleType) -> None:
    if example.FRAMEWORK == "sklearn":  # no epochs, no probabilities, no partial_fit, no flavor
        assert not hasattr(example, "predict_proba") and not hasattr(example, "log_to_mlflow")
        assert "epochs" not in example.CONFIG_SCHEMA["properties"]
        x, y = tiny()
        fitted, history = example.fit(x, y, 3, contract.params(example, example_config()), 0, {})
        assert history == [] and not hasattr(fitted[-1], "partial_fit")
    else:  # another architecture, saved with its settings so that load() rebuilds it
        assert "dropout" in example.CONFIG_SCHEMA["properties"]
        net = example.build(5, 3, contract.params(example, example_config()))
        assert type(net).__name__ != "MLP" and any("Dropout" in type(m).__name__ for m in net.modules())


def project_with(tmp_path: Path, source: str) -> Path:
    """A copy of the parts of this project the config check reads, with model.py = source."""
    (tmp_path / "src" / PKG).mkdir(parents=True)
    (tmp_path / "src" / PKG / "model.py").write_text(source)
    shutil.copytree(ROOT / "workflow" / "schemas", tmp_path / "workflow" / "schemas")
    return tmp_path


def problem(config: dict[str, Any], root: Path = ROOT) -> str | None:
    try:
        _step.validate(config, root=root)
    except _step.ConfigError as error:
        return str(error)
    return None


def changed(dotted: str, value: Any, config: dict[str, Any] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(config or CONFIG)
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf)
    else:
        node[leaf] = value
    return config


def test_example_config_passes_the_check_and_the_shipped_one_does_not(tmp_path: Path) -> None:
    root = project_with(tmp_path, example_source())
    assert problem(example_config(), root) is None
    if "C" in example_config()["model"]:
        assert problem(changed("model.C", 0, example_config()), root) == (
            "config/config.yaml: model.C: 0 is less than or equal to the minimum of 0")
        line = problem(changed("model.c", 1.0, example_config()), root)
        assert line.startswith("config/config.yaml: model.c: not read by this project's model (")
        assert line.endswith(f"/src/{PKG}/model.py, CONFIG_SCHEMA); did you mean model.C?")
    # The shipped settings (epochs...) mean nothing to the example: refused, not ignored.
    if "C" in example_config()["model"]:
        assert "model.alpha: not read by this project's model" in problem(CONFIG, root)


MODEL_KEY = "learning_rate"


@pytest.mark.parametrize(("dotted", "value", "line"), [
    ("model.epoch", 3, "model.epoch: not read by this project's model (src/{pkg}/model.py, "
                       "CONFIG_SCHEMA); did you mean model.epochs?"),
    ("model.epochs", 0, "model.epochs: 0 is less than the minimum of 1"),
    ("model.epochs", None, "model.epochs: missing; this key is required"),
    ("model.learning_rate", "fast", "model.learning_rate: 'fast' is not of type 'number'"),
    ("train.epochs", 3, "train.epochs: unknown key; did you mean model.epochs? (the model's settings "
                        "live in the model: section)"),
    ("prepare.shuffle", False, "prepare.stratify: true needs prepare.shuffle: true (an unshuffled "
                               "split takes the last rows as they are); accepted: stratify: false "
                               "with shuffle: false"),
    ("prepare.test_size", 1.5, "prepare.test_size: 1.5 is neither a fraction (0 < x < 1) nor a whole "
                               "number of rows; accepted: e.g. 0.25 or 450"),
    ("prepare.test_size", 0, "prepare.test_size: 0 is less than or equal to the minimum of 0"),
    ("prepare.test_sha256", "0" * 64, "prepare.test_file: missing; this key is required"),
    ("prepare.split_column", "part", "prepare.shuffle: not read when prepare.split_column is set; "
                                     "accepted: split_column"),
    ("prepare.suffle", True, "prepare.suffle: unknown key; did you mean prepare.shuffle?"),
])
def test_config_check_names_the_key(dotted: str, value: Any, line: str) -> None:
    assert problem(changed(dotted, value)) == f"config/config.yaml: {line.format(pkg=PKG)}"


def test_framework_settings_follow_train_framework() -> None:
    if CONFIG["train"]["framework"] == "pytorch":
        assert problem(changed("train.device", "tpu")).startswith("config/config.yaml: train.device: 'tpu'")
    else:
        assert problem(changed("train.device", "cpu")) == (
            "config/config.yaml: train.device: not read when train.framework is sklearn; accepted: framework")


def test_split_options_are_valid_together() -> None:
    unshuffled = changed("prepare.stratify", False, changed("prepare.shuffle", False))
    assert problem(changed("prepare.test_size", 40, unshuffled)) is None
    test_file = changed("prepare.test_file", "tables/test.csv", {**CONFIG, "prepare": {}})
    assert problem(changed("prepare.test_sha256", "a" * 64, test_file)) is None
    assert problem({**CONFIG, "prepare": {"split_column": "part"}}) is None


def table(path: Path, rows: int = 40, split: bool = False) -> None:
    lines = ["a,b,label" + (",part" if split else "")]
    lines += [f"{i},{i % 7},{i % 2}" + (f",{'test' if i % 4 == 0 else 'train'}" if split else "")
              for i in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def prepared(tmp_path: Path, prepare: dict[str, Any], split: bool = False) -> Path:
    raw = tmp_path / "raw"
    table(raw / "t.csv", split=split)
    out = tmp_path / "prepared"
    data.prepare(raw, out, {"seed": 3, "data": {"target": "label"}, "prepare": prepare}, tmp_path)
    return out


def test_unshuffled_split_trains_on_the_first_rows(tmp_path: Path) -> None:
    out = prepared(tmp_path, {"shuffle": False, "stratify": False, "test_size": 10})
    x_train, _ = data.load_split(out, "train")
    x_test, _ = data.load_split(out, "test")
    assert x_train[:, 0].tolist() == list(range(30)) and x_test[:, 0].tolist() == list(range(30, 40))
    split = json.loads((out / "meta.json").read_text())["split"]
    assert split == {"mode": "random", "shuffle": False, "stratify": False, "test_size": 10,
                     "n_train": 30, "n_test": 10}


def test_test_size_as_a_count_and_a_fraction(tmp_path: Path) -> None:
    assert len(data.load_split(prepared(tmp_path / "a", {"test_size": 7}), "test")[1]) == 7
    out = prepared(tmp_path / "b", {"test_size": 0.25, "stratify": True})
    y_test = data.load_split(out, "test")[1]
    assert len(y_test) == 10 and sorted(np.bincount(y_test).tolist()) == [5, 5]


def test_split_column_marks_the_rows(tmp_path: Path) -> None:
    out = prepared(tmp_path, {"split_column": "part"}, split=True)
    x_test, _ = data.load_split(out, "test")
    assert x_test[:, 0].tolist() == list(range(0, 40, 4))
    assert json.loads((out / "meta.json").read_text())["features"] == ["a", "b"]


def test_test_file_is_pinned_by_its_sha256(tmp_path: Path) -> None:
    table(tmp_path / "tables" / "test.csv", rows=6)
    digest = hashlib.sha256((tmp_path / "tables" / "test.csv").read_bytes()).hexdigest()
    out = prepared(tmp_path, {"test_file": "tables/test.csv", "test_sha256": digest})
    assert len(data.load_split(out, "train")[1]) == 40 and len(data.load_split(out, "test")[1]) == 6
    pinned = f"prepare.test_sha256: .* has sha256 {digest}, the config pins 0+; refused"
    with pytest.raises(SystemExit, match=pinned):
        prepared(tmp_path / "other", {"test_file": "../tables/test.csv", "test_sha256": "0" * 64})
