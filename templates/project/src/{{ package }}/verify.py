"""Compare a run with the committed reference results, and explain any difference.

The reference (reference/, committed by `snakemake -c1 publish`) holds the
metrics, the per-epoch history, dvc.lock and a provenance summary. A run verifies when every
metric is within its tolerance (exact by default; `verify.gpu_tolerance` applies when either run
trained on a GPU) and, with `verify.strict` (the default), when its inputs are the reference's:
the parameters the run used, the data (raw and prepared, by sha256) and the code (by sha256).
Whatever the outcome, the report says what differs: parameters, data hashes, code, packages and
hardware. Packages and hardware are reported, never failed on: the tolerances cover them.

"Code" is the content of the files under CODE_PATHS that git would commit, not a commit id:
publishing makes a commit of its own, and a reviewer's clone, a shallow clone or a copy without
git history at the same code must verify. config/ is not code: its result-bearing values are
the compared parameters, and the rest (tracking, storage, chameleon) does not change results.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from . import data, provenance

REFERENCE = "reference"
CODE_PATHS = ("src", "workflow", "dvc.yaml", "requirements.lock", "requirements-torch-cpu.lock",
              "requirements-torch-cuda.lock")
DATA = ("data/raw", "data/prepared")  # compared file by file, by sha256


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def fingerprint(environment: dict[str, Any]) -> str:
    """One hash for the software: Python version and every installed package version."""
    payload = {"python": environment["python"]["version"], "packages": environment["packages"]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def code_manifest(root: Path) -> dict[str, str]:
    """sha256 of every code file by path: the files under CODE_PATHS that git would commit
    (tracked, or new and not ignored); outside a git repository, every file there but caches."""
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                           *CODE_PATHS], cwd=root, capture_output=True, text=True)
    if proc.returncode == 0:
        names = sorted({name for name in proc.stdout.split("\0") if name})
    else:
        names = sorted(path.relative_to(root).as_posix() for name in CODE_PATHS
                       for path in ([root / name] if (root / name).is_file() else (root / name).rglob("*"))
                       if path.is_file() and "__pycache__" not in path.parts)
    return {name: data.sha256_file(root / name) for name in names if (root / name).is_file()}


def run_params(config: dict[str, Any]) -> dict[str, Any]:
    """The parameters the run used, by dotted key: what its MLflow run records (the seed, data,
    prepare, train and model sections, with the defaults for keys the config leaves out)."""
    from . import tracking

    return _flat(tracking.run_params(config))


def snapshot(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The provenance summary of the results in the working copy now."""
    environment = _read(root / "results" / "environment.json") or {}
    training = _read(root / "models" / "training.json") or {}
    git = provenance.git_state(root)
    manifests = {name: data.manifest(root / name) if (root / name).exists() else {} for name in DATA}
    return {
        "commit": git["commit"],
        "dirty": git["dirty"],
        "params": run_params(config),
        "data": manifests["data/raw"],
        "prepared": manifests["data/prepared"],
        "code": code_manifest(root),
        "model": data.manifest(root / "models") if (root / "models").exists() else {},
        "environment_fingerprint": fingerprint(environment) if environment else None,
        "python": environment.get("python", {}).get("version"),
        "packages": environment.get("packages", {}),
        "hardware": {"cpu": environment.get("cpu", {}).get("model"),
                     "gpus": [g.get("name") for g in environment.get("gpus", [])]},
        "device": training.get("device"),
        "precision": training.get("precision"),
    }


def publish(root: Path, config: dict[str, Any]) -> Path:
    """Make the current results the reference that later runs are verified against."""
    target = root / REFERENCE
    target.mkdir(exist_ok=True)
    for name in ("metrics.json", "history.json"):
        shutil.copyfile(root / "results" / name, target / name)
    shutil.copyfile(root / "dvc.lock", target / "dvc.lock")
    summary = snapshot(root, config)
    (target / "provenance.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return target


def input_differences(root: Path, reference: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One line per parameter, data file and code file that differs from the reference: what
    `verify.strict` fails on. A reference published before data/prepared or code were recorded
    is compared on what it has (its code by git diff from its commit)."""
    lines = []
    ref_params, params = reference["params"], now["params"]
    for key in sorted(set(ref_params) | set(params)):
        if ref_params.get(key) != params.get(key):
            lines.append(f"parameter {key}: reference {ref_params.get(key)!r}, now {params.get(key)!r}")
    for folder, field in zip(DATA, ("data", "prepared"), strict=True):
        if field not in reference:
            continue
        for path in sorted(set(reference[field]) | set(now[field])):
            if reference[field].get(path) != now[field].get(path):
                lines.append(f"data {folder}/{path}: sha256 reference {reference[field].get(path)}, "
                             f"now {now[field].get(path)}")
    at = (f"reference commit {str(reference.get('commit'))[:12]}, now {str(now['commit'])[:12]}"
          f"{', dirty' if now['dirty'] else ''}")
    if "code" in reference:
        ref_code, code = reference["code"], now["code"]
        for path in sorted(set(ref_code) | set(code)):
            if ref_code.get(path) != code.get(path):
                what = ("new, not in the reference" if path not in ref_code else
                        "removed since the reference" if path not in code else "changed since the reference")
                lines.append(f"code {path}: {what} ({at})")
        return lines
    changed, note = _code_changes(root, reference.get("commit"))
    lines += [f"code {path}: changed since the reference ({at})" for path in changed]
    if note:
        lines.append(f"code: {note}")
    return lines


def _code_changes(root: Path, commit: str | None) -> tuple[list[str], str | None]:
    if not commit:
        return [], "the reference has no commit"
    proc = subprocess.run(
        ["git", "diff", "--name-only", commit, "--", *CODE_PATHS], cwd=root, capture_output=True, text=True
    )
    if proc.returncode != 0:
        return [], f"reference commit {commit[:12]} is not in this clone"
    return [line for line in proc.stdout.splitlines() if line], None


class ToleranceError(SystemExit):
    """A tolerance names no metric: it would leave the metric it meant exact, silently."""


def check_tolerance_names(config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Every verify.tolerance / gpu_tolerance key is a metric of results/metrics.json; one line if not.

    The schema cannot know the metrics (evaluate.py makes them), so a misspelt name is caught here.
    """
    import difflib

    from .evaluate import METRICS

    known = sorted(set(metrics) | set(METRICS))  # log_loss stays valid for a model without it
    for section in ("tolerance", "gpu_tolerance"):
        for name in sorted(set(config.get("verify", {}).get(section, {})) - set(known)):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = (f"did you mean verify.{section}.{close[0]}?" if close
                    else f"accepted: {', '.join(known)}")
            raise ToleranceError(f"config/config.yaml: verify.{section}.{name}: not a metric of this "
                                 f"project (results/metrics.json); {hint}")


def _tolerances(config: dict[str, Any], gpu: bool) -> dict[str, float]:
    section = config.get("verify", {})
    return {**section.get("tolerance", {}), **(section.get("gpu_tolerance", {}) if gpu else {})}


REFERENCE_FILES = ("metrics.json", "history.json", "dvc.lock", "provenance.json")
# Files of the reference whose content hash the reference's own dvc.lock records (stage, path).
HASHED = {"metrics.json": "results/metrics.json", "history.json": "results/history.json"}


def reference_problems(ref_dir: Path) -> list[str] | None:
    """None when no reference is published; else what is missing or altered (empty: sound).

    The reference's dvc.lock, written by publish, records the md5 of the metrics and history it
    was made with: a reference edited afterwards, or committed in part, is named here.
    """
    present = [name for name in REFERENCE_FILES if (ref_dir / name).exists()]
    if not present:
        return None
    problems = [f"reference/{name} is missing from this commit (published in part?)"
                for name in REFERENCE_FILES if name not in present]
    if problems:
        return problems
    import yaml

    try:
        lock = yaml.safe_load((ref_dir / "dvc.lock").read_text()) or {}
        recorded = {out["path"]: out.get("md5") for stage in lock.get("stages", {}).values()
                    for out in stage.get("outs", [])}
    except (yaml.YAMLError, AttributeError, TypeError, KeyError):
        return ["reference/dvc.lock is not a dvc.lock file"]
    for name, path in HASHED.items():
        found = hashlib.md5((ref_dir / name).read_bytes()).hexdigest()
        if recorded.get(path) and recorded[path] != found:
            problems.append(f"reference/{name} was altered after publishing: its md5 is {found}, "
                            f"reference/dvc.lock records {recorded[path]} for {path}")
    for name in ("metrics.json", "provenance.json"):
        try:
            json.loads((ref_dir / name).read_text())
        except ValueError as error:
            problems.append(f"reference/{name} is not valid JSON ({error})")
    return problems


def compare(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Everything the report and the exit status need; 'status' is ok, failed, invalid-reference
    or no-reference."""
    ref_dir = root / REFERENCE
    now = snapshot(root, config)
    metrics = _read(root / "results" / "metrics.json")
    if metrics:
        check_tolerance_names(config, metrics)
    problems = reference_problems(ref_dir)
    if problems is None or problems:
        return {"status": "no-reference" if problems is None else "invalid-reference", "metrics": [],
                "differences": problems or [], "now": now, "reference": None, "current_metrics": metrics}
    reference = _read(ref_dir / "provenance.json")
    expected = _read(ref_dir / "metrics.json")
    gpu = "cuda" in (now.get("device"), reference.get("device"))
    tolerances = _tolerances(config, gpu)
    rows = []
    for name in sorted(set(expected) | set(metrics)):
        want, got, tol = expected.get(name), metrics.get(name), float(tolerances.get(name, 0.0))
        ok = want is not None and got is not None and abs(float(got) - float(want)) <= tol
        rows.append({"metric": name, "expected": want, "found": got, "tolerance": tol, "ok": ok})
    inputs = input_differences(root, reference, now)
    differences = list(inputs)
    packages = {
        name: (reference["packages"].get(name), now["packages"].get(name))
        for name in sorted(set(reference["packages"]) | set(now["packages"]))
        if reference["packages"].get(name) != now["packages"].get(name)
    }
    if packages:
        differences.append("packages: " + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in packages.items()))
    if reference["hardware"] != now["hardware"]:
        differences.append(f"hardware: reference {reference['hardware']}, now {now['hardware']}")
    strict = bool(config.get("verify", {}).get("strict", True))
    return {
        "status": "ok" if all(r["ok"] for r in rows) and not (strict and inputs) else "failed",
        "metrics": rows,
        "strict": strict,
        "input_differences": inputs,
        "differences": differences,
        "packages_differ": packages,
        "model_identical": reference["model"] == now["model"],
        "gpu_tolerances": gpu,
        "reference": {k: reference[k] for k in ("commit", "environment_fingerprint", "python",
                                                 "hardware", "device", "precision")},
        "now": {k: now[k] for k in ("commit", "dirty", "environment_fingerprint", "python",
                                     "hardware", "device", "precision")},
        "data": {"reference": reference["data"], "now": now["data"]},
    }


def plot_curves(root: Path, path: Path) -> None:
    """Training curves, reference (dashed) beside this run (solid); for a model trained without
    epochs (an empty history on both sides), a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    now = _read(root / "results" / "history.json") or []
    ref = _read(root / REFERENCE / "history.json") or []
    keys = [k for k in ("loss", "accuracy") if any(k in r for r in now + ref)]
    keys += sorted({k for r in now + ref for k in r} - {"epoch", *keys})
    if not keys:
        fig, ax = plt.subplots(figsize=(6, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, "no training curves: this model trains without epochs", ha="center",
                va="center")
    else:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            for rows, style, label in ((ref, "--", "reference"), (now, "-", "this run")):
                rows = [r for r in rows if key in r]
                if rows:
                    ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], style, label=label)
            ax.set_xlabel("epoch")
            ax.set_title(f"training {key}")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    status = {"ok": "VERIFIED", "failed": "NOT REPRODUCED", "invalid-reference": "REFERENCE INVALID",
              "no-reference": "NO REFERENCE YET"}[result["status"]]
    lines = [f"# Reproduction report: {status}", ""]
    if result["status"] == "no-reference":
        lines += ["No reference results are committed yet. To make this run the reference:",
                  "`snakemake -c1 publish` (it commits `reference/`).", ""]
    elif result["status"] == "invalid-reference":
        lines += ["The committed reference cannot be trusted, so nothing was compared:", ""]
        lines += [f"- {problem}" for problem in result["differences"]]
        lines += [""]
    else:
        lines += ["## Metrics", "", "| metric | reference | this run | tolerance | |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['metric']} | {r['expected']} | {r['found']} | {r['tolerance']} | "
                  f"{'ok' if r['ok'] else 'MISMATCH'} |" for r in result["metrics"]]
        ref, now = result["reference"], result["now"]
        lines += ["", "## Provenance", "", "| | reference | this run |", "| --- | --- | --- |",
                  f"| commit | {ref['commit']} | {now['commit']}{' (dirty)' if now['dirty'] else ''} |",
                  f"| environment fingerprint | {ref['environment_fingerprint']} | "
                  f"{now['environment_fingerprint']} |",
                  f"| Python | {ref['python']} | {now['python']} |",
                  f"| CPU | {ref['hardware']['cpu']} | {now['hardware']['cpu']} |",
                  f"| GPUs | {', '.join(ref['hardware']['gpus']) or 'none'} | "
                  f"{', '.join(now['hardware']['gpus']) or 'none'} |",
                  f"| device / precision | {ref['device']} / {ref['precision']} | "
                  f"{now['device']} / {now['precision']} |",
                  f"| model files identical | | {result['model_identical']} |"]
        for path in sorted(set(result["data"]["reference"]) | set(result["data"]["now"])):
            lines.append(f"| data/raw/{path} sha256 | {result['data']['reference'].get(path)} | "
                         f"{result['data']['now'].get(path)} |")
        lines += ["", "## What differs from the reference", ""]
        if result["input_differences"]:
            lines += [("`verify.strict` is on: a difference in parameters, data or code fails "
                       "verification, whatever the metrics." if result["strict"] else
                       "`verify.strict` is off: verified on the metrics alone."), ""]
        lines += [f"- {d}" for d in result["differences"]] or ["- nothing: same parameters, data, "
                                                                 "code, packages and hardware"]
    lines += ["", "## Training curves", "", "![training curves](curves.png)", ""]
    return "\n".join(lines)
