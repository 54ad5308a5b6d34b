"""Check that dvc.yaml and the Snakemake rules describe the same pipeline.

For every step: the same name, the same command, the same inputs (deps), outputs (outs, metrics,
plots), params, and the same outputs kept while the step runs (Snakemake `update()`, DVC
`persist`). Logs are not outputs: the step script itself writes logs/<script>.log under either
front end (_step.log_step), so each rule (publish too) must name exactly that file as its `log:`.
Exits non-zero naming each stage that disagrees, so neither front end can drift.
Usage: python workflow/scripts/check_pipeline.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
# Not pipeline steps: the default target, publish (acts on git and the remote; its log is checked),
# and every rule in rules/provision.smk (the Chameleon rules act on the testbed, not on files).
SKIP_RULES = {"publish"}
TESTBED_RULES = Path("workflow") / "rules" / "provision.smk"


def dvc_stages(path: Path) -> dict[str, dict[str, Any]]:
    stages = {}
    for name, stage in (yaml.safe_load(path.read_text()).get("stages") or {}).items():
        outs, kept = [], []
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind) or []:
                outs.append(next(iter(item)) if isinstance(item, dict) else item)
                if isinstance(item, dict) and (next(iter(item.values())) or {}).get("persist"):
                    kept.append(outs[-1])
        params = []
        for item in stage.get("params") or []:
            if isinstance(item, dict):
                for keys in item.values():
                    params += list(keys)
            else:
                params.append(item)
        stages[name] = {
            "cmd": " ".join(str(stage.get("cmd", "")).split()),
            "deps": sorted(stage.get("deps") or []),
            "outs": sorted(outs),
            "kept": sorted(kept),
            "params": sorted(p.replace(".", "_") for p in params),
        }
    return stages


def log_problem(name: str, cmd: str, logs: list[str]) -> str | None:
    """None when the rule's `log:` is the file its step script writes (logs/<script>.log)."""
    script = re.search(r"workflow/scripts/(\w+)\.py", cmd)
    expected = [f"logs/{script.group(1)}.log"] if script else None
    if expected is None:
        return f"rule '{name}': its command runs no step script (workflow/scripts/*.py) to write a log"
    if logs != expected:
        return f"rule '{name}': log {logs or 'missing'}, but its step writes {expected[0]}"
    return None


def snakemake_rules(root: Path) -> dict[str, dict[str, Any]]:
    from snakemake.api import SnakemakeApi
    from snakemake.io import is_flagged
    from snakemake.settings.types import OutputSettings, ResourceSettings

    rules = {}
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(),
            snakefile=root / "workflow" / "Snakefile",
            workdir=root,
        )
        # The public API prints rules but does not return them; the parsed workflow holds them.
        for rule in workflow_api._workflow.rules:
            if rule.name == "all" or Path(rule.snakefile).resolve() == (root / TESTBED_RULES).resolve():
                continue
            rules[rule.name] = {
                "cmd": " ".join(str(rule.shellcmd or "").split()),
                "deps": sorted(str(f) for f in rule.input),
                "outs": sorted(str(f) for f in rule.output),
                "kept": sorted(str(f) for f in rule.output if is_flagged(f, "update")),
                "params": sorted(rule.params.keys()),
                "log": [str(f) for f in rule.log],
            }
    return rules


def compare(dvc: dict[str, dict[str, Any]], smk: dict[str, dict[str, Any]]) -> list[str]:
    problems = [problem for name, rule in sorted(smk.items())
                if (problem := log_problem(name, rule["cmd"], rule["log"]))]
    smk = {name: rule for name, rule in smk.items() if name not in SKIP_RULES}
    for name in sorted(set(dvc) | set(smk)):
        if name not in smk:
            problems.append(f"stage '{name}': in dvc.yaml but no Snakemake rule of that name")
            continue
        if name not in dvc:
            problems.append(f"stage '{name}': a Snakemake rule with no stage in dvc.yaml")
            continue
        for field in ("cmd", "deps", "outs", "kept", "params"):
            a, b = dvc[name][field], smk[name][field]
            if a != b:
                if isinstance(a, list):
                    only_dvc, only_smk = sorted(set(a) - set(b)), sorted(set(b) - set(a))
                    detail = f"only in dvc.yaml {only_dvc}, only in Snakemake {only_smk}"
                else:
                    detail = f"dvc.yaml '{a}' vs Snakemake '{b}'"
                problems.append(f"stage '{name}': {field} differ: {detail}")
    return problems


def main() -> int:
    problems = compare(dvc_stages(ROOT / "dvc.yaml"), snakemake_rules(ROOT))
    for problem in problems:
        print(f"check_pipeline: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("check_pipeline: dvc.yaml and the Snakemake rules agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
