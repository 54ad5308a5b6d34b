rule train:
    input:
        "data/prepared",
        "results/environment.json",
        "workflow/scripts/train.py",
        f"{PKG}/train.py",
        f"{PKG}/model.py",
        f"{PKG}/contract.py",
    output:
        update(directory("models")),  # kept until replaced: see _step.keeping_last_good
        "results/history.json",
    log:
        "logs/train.log",
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
    shell:
        "python workflow/scripts/evaluate.py"
