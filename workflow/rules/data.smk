rule data:
    # The pinned raw data: pulled from the DVC remote when dvc.lock pins it for this config (checked
    # on download), else fetched from its source and verified against its pin; every file hashed
    # (sha256) as it is written, once: later steps reuse the hash recorded with the file.
    input:
        "results/environment.json",
        "workflow/scripts/data.py",
        "workflow/scripts/storage.py",
        f"{PKG}/data.py",
    output:
        update(directory("data/raw")),  # kept until replaced: see _step.keeping_last_good
        "results/data.json",
    log:
        "logs/data.log",
    resources:
        **job_resources(config, "data"),  # what its SLURM job asks for (config: cluster)
    params:
        data=config["data"],
    shell:
        "python workflow/scripts/data.py"


rule prepare:
    # The train/test split prepare.* describes (seeded random, unshuffled, a test file or a column),
    # as .npy files that training and evaluation memory-map (data.load_split).
    input:
        "data/raw",
        "results/environment.json",
        "workflow/scripts/prepare.py",
        f"{PKG}/data.py",
    output:
        update(directory("data/prepared")),  # kept until replaced: see _step.keeping_last_good
    log:
        "logs/prepare.log",
    resources:
        **job_resources(config, "prepare"),  # what its SLURM job asks for (config: cluster)
    params:
        seed=config["seed"],
        prepare=config["prepare"],
        data_target=config["data"]["target"],
    shell:
        "python workflow/scripts/prepare.py"
