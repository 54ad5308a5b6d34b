"""The config check both front ends share: config/config.yaml read, then refused in one line.

The schema (workflow/schemas/config.schema.json, every object closed to unknown keys, a misspelt
key answered with the nearest known one), then the model's own declarations (src/<package>/
model.py: FRAMEWORK and the CONFIG_SCHEMA of its `model:` section, read without importing it), the
split options, and overrides given to Snakemake that the steps would not see. The Snakefile and
every step script (so `dvc repro`) call load_config: the same key gives the same line.
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "config.yaml"
SCHEMA = Path("workflow") / "schemas" / "config.schema.json"


class ConfigError(SystemExit):
    """A bad config value: exits non-zero with one line naming the key, the value and the rule."""


def refuse_unmerged(root: Path = ROOT) -> None:
    """Stop, naming the files, while `copier update` (or a merge) has left conflicts unresolved.

    Copier leaves inline conflict markers and marks the files unmerged in git's index; reading such
    a config would fail obscurely or, worse, run with half of each side.
    """
    import subprocess

    proc = subprocess.run(["git", "ls-files", "--unmerged"], cwd=root, capture_output=True, text=True)
    files = sorted({line.split("\t", 1)[1] for line in proc.stdout.splitlines() if "\t" in line})
    if files:
        raise ConfigError(
            f"unresolved merge conflicts in {', '.join(files)} (left by `copier update` or a merge): "
            "edit out the <<<<<<< ======= >>>>>>> markers, then `git add` the files; nothing was run"
        )


def load_config(path: Path = CONFIG) -> dict[str, Any]:
    """config/config.yaml, validated (see `validate`); any problem is one line and a non-zero exit."""
    refuse_unmerged()
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{_shown(path)}: not valid YAML{where}: {problem}") from None
    checked = _checked_key(path, config)
    if checked is None or not _already_checked(checked):
        validate(config, _shown(path))
        _remember_checked(checked)
    return config


# The digest of what the last successful check read: the Snakefile checks at the start of a run,
# then each step finds the same digest and skips jsonschema (a tenth of a second per step).
CHECKED = Path(".snakemake") / "reprostack" / "config-checked"


def _checked_key(path: Path, config: Any) -> str | None:
    """sha256 over every file `validate` reads (the config, the schema, the model's model.py) and
    the code that checks (this module, launch.py's distributed shape); None when the config names
    no package to find model.py by."""
    import hashlib

    try:
        package = ROOT / "src" / str(config["project"]["package"])
    except (KeyError, TypeError):
        return None
    digest = hashlib.sha256()
    code = (Path(__file__), Path(__file__).with_name("launch.py"))
    for source in (path, ROOT / SCHEMA, package / "model.py", *code):
        digest.update(source.read_bytes() if source.is_file() else b"(none)")
        digest.update(b"\0")
    return digest.hexdigest()


def _already_checked(key: str) -> bool:
    try:
        return (ROOT / CHECKED).read_text().strip() == key
    except OSError:
        return False


def _remember_checked(key: str | None) -> None:
    """Best effort: a project that cannot be written to checks every time."""
    import os

    if key is None:
        return
    target = ROOT / CHECKED
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{os.getpid()}")
        scratch.write_text(key + "\n")
        scratch.replace(target)  # steps that run at once never read half a digest
    except OSError:
        pass


def validate(config: Any, source: str = "config/config.yaml", root: Path = ROOT) -> None:
    """Raise ConfigError with one line for the first problem: an unknown or misspelt key (with the
    nearest known one), a value the schema refuses, a train setting that contradicts the model, a
    model setting its CONFIG_SCHEMA refuses, or split options that contradict each other.

    The one check of both front ends: the Snakefile calls it before scheduling, every step script
    (what `dvc repro` runs) through load_config. A key nobody reads is refused rather than ignored,
    so the run never trains with a default while the record shows the misspelt value.
    """
    import jsonschema

    schema = json.loads((root / SCHEMA).read_text())
    model_keys = _model_keys(config, root)
    problem = _schema_problem(jsonschema.Draft202012Validator(schema), config, model_keys)
    if problem is None:
        problem = (_model_problem(config, root) or _distributed_problem(config, root)
                   or nodes_problem(config) or _split_problem(config["prepare"]))
    if problem:
        raise ConfigError(f"{source}: {problem}")


def _schema_problem(validator: Any, instance: Any, model_keys: set[str] | None = None,
                    owner: str | None = None) -> str | None:
    """The first problem jsonschema finds, in one line: unknown keys first (the outermost), then
    keys the section's current choice does not read, then the most relevant value error."""
    import jsonschema

    errors = list(validator.iter_errors(instance))
    unknown = [e for e in errors if e.validator == "additionalProperties" and e.validator_value is False]
    misplaced = [e for e in errors if "propertyNames" in e.absolute_schema_path]
    if unknown:
        error = min(unknown, key=lambda e: len(e.absolute_path))
        return _unknown_key(error, validator.schema, instance, model_keys, owner)
    if misplaced:
        return _misplaced_key(validator.schema, misplaced[0])
    error = jsonschema.exceptions.best_match(errors)
    return None if error is None else _located(error)


def _dotted(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


def _nearest(key: str, where: str, known: Iterable[str]) -> str:
    """"did you mean model.epochs?" for the closest known sibling, else the list of accepted keys."""
    known = sorted(known)
    lowered = {name.lower(): name for name in known}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"did you mean {where}{lowered[close[0]]}?"
    return f"accepted: {', '.join(known) or 'none (this section takes no keys)'}"


def _unknown_key(error: Any, schema: dict[str, Any], instance: Any, model_keys: set[str] | None,
                 owner: str | None) -> str:
    """The unknown key and the nearest one the section accepts here: under a section whose keys
    depend on a choice (train.framework, data.source), only the keys of the current choice; a
    model setting written under train is pointed to the model section."""
    known = set(error.schema.get("properties", {}))
    key = sorted(k for k in error.instance if k not in known)[0]
    path = list(error.absolute_path)
    where = _dotted(path)
    if path == ["train"] and model_keys and key in model_keys:
        return (f"train.{key}: unknown key; did you mean model.{key}? (the model's settings live "
                "in the model: section)")
    branch = _branch_keys(_section(schema, path), error.instance)
    if branch is not None:
        known = branch
    if owner:
        return f"{where}.{key}: not read by {owner}; {_nearest(key, f'{where}.', known)}"
    where = f"{where}." if where else ""
    return f"{where}{key}: unknown key; {_nearest(key, where, known)}"


def _section(schema: dict[str, Any], path: list[Any]) -> dict[str, Any]:
    for part in path:
        schema = schema.get("properties", {}).get(part, {})
    return schema


def _branch_keys(section: dict[str, Any], instance: Any) -> set[str] | None:
    """The keys the section reads for the instance's current choice: the propertyNames of the
    `if: {properties: {<key>: {const: ...}}}` branch that holds; None when no branch applies."""
    for rule in section.get("allOf", []):
        condition = rule.get("if", {}).get("properties", {})
        names = rule.get("then", {}).get("propertyNames", {}).get("enum")
        consts = {name: c["const"] for name, c in condition.items() if "const" in c}
        if names and consts and all(instance.get(n) == v for n, v in consts.items()):
            return set(names)
    return None


def _misplaced_key(schema: dict[str, Any], error: Any) -> str:
    """A known key that the section's current choice does not read (data.url with source sample,
    prepare.shuffle with a test file)."""
    where = _dotted(error.absolute_path)
    branch: Any = schema
    for part in list(error.absolute_schema_path)[:-3]:  # [..., allOf, i] without then.propertyNames.enum
        branch = branch[part]
    condition = branch.get("if", {})
    said = [f"{where}.{name} is {rule['const']}"
            for name, rule in condition.get("properties", {}).items() if "const" in rule]
    said += [f"{where}.{name} is set" for name in condition.get("required", [])
             if "const" not in condition.get("properties", {}).get(name, {})]
    when = f"when {' and '.join(said)}" if said else "here"
    return (f"{where}.{error.instance}: not read {when}; "
            f"{_nearest(error.instance, f'{where}.', error.validator_value)}")


def _located(error: Any) -> str:
    """"model.epochs: 0 is less than the minimum of 1": the dotted key, then jsonschema's message;
    a missing required key is named itself rather than its parent."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            return f"{_dotted([*path, missing[0]])}: missing; this key is required"
    return f"{_dotted(path) or '(top level)'}: {error.message}"


DECLARED = ("FRAMEWORK", "CONFIG_SCHEMA")
OPTIONAL = ("DISTRIBUTED",)  # True: fit() trains under torch.distributed (contract.py)


def model_declaration(package_dir: Path) -> dict[str, Any]:
    """FRAMEWORK and CONFIG_SCHEMA of the project's model.py, read without importing it (no torch
    import for a config check): the literal values of those two top-level assignments."""
    path = package_dir / "model.py"
    if not path.is_file():
        return {}
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id in DECLARED + OPTIONAL and node.value:
            try:
                found[target.id] = ast.literal_eval(node.value)
            except ValueError:
                found.pop(target.id, None)
    missing = [name for name in DECLARED if name not in found]
    if missing:
        raise ConfigError(f"{_shown(path)}: no literal {' or '.join(missing)}; the config check reads "
                          "FRAMEWORK = '<framework>' and CONFIG_SCHEMA = {<JSON schema of the "
                          "model: section>} (see src/<package>/contract.py)")
    return found


def model_schema(declared: dict[str, Any]) -> dict[str, Any]:
    """The model section's schema: CONFIG_SCHEMA, refusing keys it does not list unless it says
    otherwise (a misspelt hyperparameter must not train with its default)."""
    return {"type": "object", "additionalProperties": False, **declared["CONFIG_SCHEMA"]}


def _model_keys(config: Any, root: Path) -> set[str] | None:
    """The model settings this project's model reads, when config names a package with a model.py."""
    try:
        declared = model_declaration(root / "src" / str(config["project"]["package"]))
        return set(declared["CONFIG_SCHEMA"].get("properties", {})) if declared else None
    except (KeyError, TypeError, AttributeError, SyntaxError, ConfigError):
        return None


def _model_problem(config: dict[str, Any], root: Path) -> str | None:
    """train.framework must be the framework the project's model trains, and the model section
    what the model's CONFIG_SCHEMA accepts; else the record would name settings that were not used."""
    import jsonschema

    package_dir = root / "src" / config["project"]["package"]
    declared = model_declaration(package_dir)
    if not declared:
        return None  # no model.py at project.package: importing the package fails, naming it
    model = _shown(package_dir / "model.py")
    framework, wanted = declared["FRAMEWORK"], config["train"]["framework"]
    if wanted != framework:
        return (f"train.framework: {wanted!r} contradicts this project, whose model ({model}) is "
                f"{framework}; accepted: {framework}")
    section = model_schema(declared)
    try:
        jsonschema.Draft202012Validator.check_schema(section)
    except jsonschema.SchemaError as error:
        return f"{model}: CONFIG_SCHEMA is not a JSON schema: {error.message}"
    wrapper = {"type": "object", "properties": {"model": section}}
    return _schema_problem(jsonschema.Draft202012Validator(wrapper), {"model": config.get("model", {})},
                           owner=f"this project's model ({model}, CONFIG_SCHEMA)")


def _distributed_problem(config: dict[str, Any], root: Path) -> str | None:
    """More than one training process needs a model whose fit() trains under DDP (DISTRIBUTED =
    True in model.py), and nccl needs CUDA: train.device cpu cannot have it. (A GPU that is not
    there is the train step's to refuse: this check does not import torch.)"""
    from launch import shape

    dist = shape(config["train"], root / SCHEMA)
    nnodes, nproc = int(dist["nnodes"]), int(dist["nproc_per_node"])
    if dist.get("backend") == "nccl" and config["train"].get("device") == "cpu":
        return ("train.distributed.backend: 'nccl' needs CUDA, but train.device is 'cpu'; "
                "accepted: gloo or auto (gloo on the CPU)")
    if nnodes * nproc == 1:
        return None
    declared = model_declaration(root / "src" / config["project"]["package"])
    if declared and declared.get("DISTRIBUTED") is not True:
        model = _shown(root / "src" / config["project"]["package"] / "model.py")
        return (f"train.distributed: {nnodes * nproc} processes (nnodes {nnodes} x nproc_per_node "
                f"{nproc}) need a model whose fit() trains its shard under DDP, and this project's "
                f"model ({model}) does not declare DISTRIBUTED = True (see contract.py); accepted: "
                "nnodes 1 and nproc_per_node 1")
    return None


def nodes_problem(config: dict[str, Any], leasing: bool = False) -> str | None:
    """chameleon.count leases the nodes train.distributed.nnodes trains on: one per node. Fewer and
    torchrun waits for nodes that never come; more and leased nodes sit idle. The default count (1)
    with nnodes > 1 is refused only when leasing (plan, provision, remote_run): the nodes may be
    machines of another kind (a cluster's), started by hand with launch.py."""
    from launch import shape

    if "chameleon" not in config:
        return None
    count = config["chameleon"].get("count", 1)
    nnodes = int(shape(config["train"])["nnodes"])
    if count == nnodes or (count == 1 and not leasing):
        return None
    if nnodes == 1:
        return (f"chameleon.count: {count} leases {count} nodes, but train.distributed.nnodes is 1: only "
                "the first would train; accepted: chameleon.count: 1, or train.distributed.nnodes: "
                f"{count} (pytorch)")
    why = "torchrun would wait for nodes that are not there" if count < nnodes else "some would sit idle"
    return (f"chameleon.count: {count} leases {count} node(s), but train.distributed.nnodes is {nnodes}: "
            f"{why}; accepted: chameleon.count: {nnodes}")


def _split_problem(prepare: dict[str, Any]) -> str | None:
    """What the schema cannot say: a stratified split is a shuffled one (as in scikit-learn's
    train_test_split), and a test size of 1 or more is a number of rows."""
    if prepare.get("stratify", True) and prepare.get("shuffle", True) is False and not (
            {"test_file", "split_column"} & set(prepare)):
        return ("prepare.stratify: true needs prepare.shuffle: true (an unshuffled split takes the "
                "last rows as they are); accepted: stratify: false with shuffle: false")
    size = prepare.get("test_size")
    if isinstance(size, float) and size >= 1 and not size.is_integer():
        return (f"prepare.test_size: {size} is neither a fraction (0 < x < 1) nor a whole number "
                "of rows; accepted: e.g. 0.25 or 450")
    return None


_ABSENT = object()


def refuse_overrides(effective: dict[str, Any], on_disk: dict[str, Any]) -> None:
    """Refuse `snakemake --config k=v` / `--configfile` values that differ from config/config.yaml.

    The steps read config/config.yaml, and DVC records its values in dvc.lock: an override would
    be recorded by Snakemake as applied while the steps used the file.
    """
    in_file = _leaves(on_disk)
    changed = {key: value for key, value in _leaves(effective).items()
               if in_file.get(key, _ABSENT) != value}
    if changed:
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(changed.items()))
        raise ConfigError(
            f"snakemake --config/--configfile: {shown} would not reach the steps, which read "
            "config/config.yaml (as dvc.lock records it); set it there instead. Nothing was run."
        )


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train.epochs": 30, ...}: every leaf by its dotted key (lists are leaves)."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}."))
    return out


def _shown(path: Path) -> str:
    """A path as the user should see it: relative to the project root when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)
