rule data:
    # Fetch the pinned source, verify its pin or checksum, hash every file.
    input:
        "workflow/scripts/data.py",
        f"{PKG}/data.py",
    output:
        directory("data/raw"),
        "results/data.json",
    params:
        data=config["data"],
    shell:
        "python workflow/scripts/data.py"


rule prepare:
    # Seeded, stratified train/test split.
    input:
        "data/raw",
        "workflow/scripts/prepare.py",
        f"{PKG}/data.py",
    output:
        directory("data/prepared"),
    params:
        seed=config["seed"],
        prepare=config["prepare"],
        data_target=config["data"]["target"],
    shell:
        "python workflow/scripts/prepare.py"
