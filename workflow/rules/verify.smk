rule verify:
    # The last step: compare this run with the committed reference (reference/) and write the
    # reproduction report. Fails naming each metric outside its tolerance and, with verify.strict,
    # each parameter, data file or code file that differs from the reference.
    input:
        "results/metrics.json",
        "results/history.json",
        "results/environment.json",
        "results/run.json",
        "data/raw",
        "data/prepared",
        "models",
        "reference",
        "workflow/scripts/verify.py",
        f"{PKG}/verify.py",
    output:
        "results/verify.json",
        report(
            "results/report.md",
            caption="../report/reproduction.rst",
            category="Reproduction",
            labels={"what": "report"},
        ),
        report(
            "results/curves.png",
            caption="../report/curves.rst",
            category="Reproduction",
            labels={"what": "training curves"},
        ),
    log:
        "logs/verify.log",
    params:
        # What verify.strict compares with the reference, beside verify's own settings: a change
        # reruns verify even where the outputs come out byte-identical.
        seed=config["seed"],
        data=config["data"],
        prepare=config["prepare"],
        train=config["train"],
        model=config.get("model", {}),
        verify=config["verify"],
    shell:
        "python workflow/scripts/verify.py"


rule publish:
    input:
        "results/run.json",
        "workflow/scripts/publish.py",
    log:
        "logs/publish.log",
    # Make this run the reference, push data and models to the shared remote, commit what a
    # reviewer needs (reference/, dvc.lock, .dvc/config). Not a DVC stage: it acts on git and
    # the remote. `snakemake -c1 publish` brings the pipeline up to date first.
    localrule: True
    shell:
        "python workflow/scripts/publish.py"
