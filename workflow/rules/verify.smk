rule verify:
    # The last step: compare this run with the committed reference (reference/) and write the
    # reproduction report. Fails naming each metric outside its tolerance and what differs.
    input:
        "results/metrics.json",
        "results/history.json",
        "results/environment.json",
        "results/run.json",
        "data/raw",
        "models",
        "reference",
        "workflow/scripts/verify.py",
        f"{PKG}/verify.py",
    output:
        "results/verify.json",
        report("results/report.md", category="Reproduction", labels={"what": "report"}),
        report("results/curves.png", category="Reproduction", labels={"what": "training curves"}),
    params:
        verify=config["verify"],
    shell:
        "python workflow/scripts/verify.py"
