# Chameleon Cloud: reserve, launch, and always tear down. These rules act on the testbed, not on
# files, so they have no outputs, run only when named, and are not DVC stages (DVC versions data;
# it does not schedule infrastructure). What they create is recorded in .chameleon/state.json.
#   snakemake -c1 plan            what would be reserved, where and for how long
#   snakemake -c1 provision -n    Snakemake's dry run: nothing is contacted
#   snakemake -c1 provision       lease + server + floating IP, waits for SSH; a rerun reuses them
#   snakemake -c1 teardown        deletes exactly what the state file names; safe to run twice


rule plan:
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py plan"


rule provision:
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py provision"


rule teardown:
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py teardown"


rule configure:
    # Over SSH: Docker and the GPU runtime, the repository at this commit, .env, the service stack.
    localrule: True
    shell:
        "python workflow/scripts/remote.py configure"


rule remote_run:
    # The pipeline on the node, inside the training container; output streams back.
    localrule: True
    shell:
        "python workflow/scripts/remote.py remote_run"


rule collect:
    # Metrics, DVC-tracked outputs (then `dvc commit` here) and the MLflow run id, back from the node.
    localrule: True
    shell:
        "python workflow/scripts/remote.py collect"
