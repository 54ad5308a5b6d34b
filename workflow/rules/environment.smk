rule environment:
    # Fails before any training when an installed package differs from the lock; records the
    # software and hardware the results were produced with.
    input:
        LOCKS,
        "workflow/scripts/environment.py",
        f"{PKG}/provenance.py",
    output:
        "results/environment.json",
    log:
        "logs/environment.log",  # written by the step (see _step.log_step)
    resources:
        **job_resources(config, "environment"),  # what its SLURM job asks for (config: cluster)
    shell:
        "python workflow/scripts/environment.py"


rule image:
    # The training container (docker/Dockerfile), built when a Docker engine is reachable.
    input:
        "docker/Dockerfile",
        LOCKS,
        "workflow/scripts/image.py",
    output:
        "results/image.json",
    log:
        "logs/image.log",
    resources:
        **job_resources(config, "image"),  # what its SLURM job asks for (config: cluster)
    shell:
        "python workflow/scripts/image.py"
