rule track:
    # One MLflow run per pipeline run: params, per-epoch metrics, the model and full provenance.
    input:
        "results/metrics.json",
        "results/history.json",
        "results/environment.json",
        "results/data.json",
        "results/image.json",
        "models",
        "workflow/scripts/track.py",
        f"{PKG}/tracking.py",
        f"{PKG}/provenance.py",
    output:
        "results/run.json",
    log:
        "logs/track.log",
    params:
        tracking=config["tracking"],
    shell:
        "python workflow/scripts/track.py"
