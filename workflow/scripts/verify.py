"""verify: compare this run with the committed reference; write the reproduction report.

Exits non-zero on a mismatch, naming each metric with the expected and found values and the
tolerance, and what differs (parameters, data hashes, code since the reference commit).
"""

import sys

from _step import ROOT, project, write_json

config, verify = project("verify")
result = verify.compare(ROOT, config)
write_json("results/verify.json", result)
verify.plot_curves(ROOT, ROOT / "results" / "curves.png")
(ROOT / "results" / "report.md").write_text(verify.markdown(result))
project("tracking")[1].link_report(ROOT, config, result)

if result["status"] == "no-reference":
    print("verify: no reference results in this commit (reference/ holds none), so nothing was "
          "compared; authors make this run the reference with `snakemake -c1 publish`", file=sys.stderr)
elif result["status"] == "invalid-reference":
    sys.exit("\n".join(["verify: the committed reference cannot be trusted; nothing was compared:",
                        *(f"  {problem}" for problem in result["differences"]),
                        "  report: results/report.md"]))
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
