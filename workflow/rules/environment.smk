rule environment:
    # Fails before any training when an installed package differs from the lock; records the
    # software and hardware the results were produced with.
    input:
        LOCKS,
        "workflow/scripts/environment.py",
        f"{PKG}/provenance.py",
    output:
        "results/environment.json",
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
    shell:
        "python workflow/scripts/image.py"
