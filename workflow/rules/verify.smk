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


rule publish:
    # Make this run the reference, push data and models to the shared remote, commit what a
    # reviewer needs (reference/, dvc.lock, .dvc/config). Not a DVC stage: it acts on git and
    # the remote. `snakemake -c1 publish` brings the pipeline up to date first.
    localrule: True
    input:
        "results/run.json",
        "workflow/scripts/publish.py",
    shell:
        "python workflow/scripts/publish.py"
