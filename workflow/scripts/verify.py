"""verify: compare this run with the committed reference; write the reproduction report.

Exits non-zero on a mismatch, naming each metric with the expected and found values and the
tolerance, and what differs (parameters, data hashes, code); with verify.strict (the default) a
difference in parameters, data or code fails even when every metric agrees, one line each.
"""

import sys
from importlib import import_module

from _step import ROOT, project, write_json
from stages import record_sources

config, verify = project("verify")
result = verify.compare(ROOT, config)
write_json("results/verify.json", result)
verify.plot_curves(ROOT, ROOT / "results" / "curves.png")
(ROOT / "results" / "report.md").write_text(verify.markdown(result))
import_module(f"{verify.__package__}.tracking").link_report(ROOT, config, result)  # config checked once
record_sources(ROOT)  # the reference this run was compared with (see stages.refresh_directory_stamps)

if result["status"] == "no-reference":
    print("verify: no reference results in this commit (reference/ holds none), so nothing was "
          "compared; authors make this run the reference with `snakemake -c1 publish`", file=sys.stderr)
elif result["status"] == "invalid-reference":
    sys.exit("\n".join(["verify: the committed reference cannot be trusted; nothing was compared:",
                        *(f"  {problem}" for problem in result["differences"]),
                        "  report: results/report.md"]))
elif result["status"] == "failed" and all(r["ok"] for r in result["metrics"]):
    lines = ["verify: every metric agrees, but the run's parameters, data or code differ from the "
             "reference (verify.strict is on; verify.strict: false compares the metrics alone):"]
    lines += [f"  differs: {d}" for d in result["input_differences"]]
    lines += ["  report: results/report.md"]
    sys.exit("\n".join(lines))
elif result["status"] == "failed":
    lines = ["verify: results differ from the reference:"]
    lines += [f"  metric {r['metric']}: expected {r['expected']}, found {r['found']}, "
              f"tolerance {r['tolerance']}" for r in result["metrics"] if not r["ok"]]
    lines += [f"  differs: {d}" for d in result["differences"]]
    lines += ["  report: results/report.md"]
    sys.exit("\n".join(lines))
else:
    print(f"verify: reproduced: {len(result['metrics'])} metrics within tolerance "
          f"(model files identical: {result['model_identical']})")
    if result["input_differences"]:
        print(f"verify: verify.strict is off, so {len(result['input_differences'])} difference(s) in "
              "parameters, data or code did not count (see results/report.md)", file=sys.stderr)
