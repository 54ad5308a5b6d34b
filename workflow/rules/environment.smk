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
