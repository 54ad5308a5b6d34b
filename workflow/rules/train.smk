from launch import local_threads


rule train:
    input:
        "data/prepared",
        "results/environment.json",
        "workflow/scripts/train.py",
        "workflow/scripts/launch.py",
        "workflow/scripts/train_rank.py",
        f"{PKG}/train.py",
        f"{PKG}/model.py",
        f"{PKG}/contract.py",
    output:
        update(directory("models")),  # kept until replaced: see _step.keeping_last_good
        "results/history.json",
    log:
        "logs/train.log",
    # Its processes (train.distributed, under torchrun) times their threads, so Snakemake does not
    # run another step on the cores training uses.
    threads: local_threads(config["train"])
    resources:
        **job_resources(config, "train"),  # what its SLURM job asks for (config: cluster)
    params:
        seed=config["seed"],
        train=config["train"],
        model=config.get("model", {}),
    shell:
        "python workflow/scripts/train.py"


rule evaluate:
    input:
        "models",
        "data/prepared",
        "workflow/scripts/evaluate.py",
        f"{PKG}/evaluate.py",
        f"{PKG}/model.py",
        f"{PKG}/contract.py",
    output:
        "results/metrics.json",
    log:
        "logs/evaluate.log",
    resources:
        **job_resources(config, "evaluate"),  # what its SLURM job asks for (config: cluster)
    shell:
        "python workflow/scripts/evaluate.py"
