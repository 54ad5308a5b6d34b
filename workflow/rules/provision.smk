# Chameleon Cloud: reserve, launch, and always tear down. These rules act on the testbed, not on
# files, so they have no outputs, run only when named, and are not DVC stages (DVC versions data;
# it does not schedule infrastructure). What they create is recorded in .chameleon/state.json.
#   snakemake -c1 plan            what would be reserved, where and for how long
#   snakemake -c1 check_site      the credentials, key pair, image, node type and duration, checked
#                                 at the site as provision does before reserving; reserves nothing
#   snakemake -c1 provision -n    Snakemake's dry run: nothing is contacted
#   snakemake -c1 provision       lease + chameleon.count servers + one floating IP (the first node's;
#                                 the others are reached through it), waits for SSH; a rerun reuses them
#   snakemake -c1 teardown        deletes exactly what the state file names; safe to run twice.
#                                 Refuses while a run that finished on the node is not collected
#   snakemake -c1 teardown_force  ... releases the node anyway (what was not collected is lost)
#   snakemake -c1 extend          prolongs the active lease by chameleon.extend_hours


rule plan:
    log:
        "logs/plan.log",
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py plan"


rule check_site:
    log:
        "logs/check_site.log",
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py check"


rule provision:
    log:
        "logs/provision.log",
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py provision"


rule teardown:
    log:
        "logs/teardown.log",
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py teardown"


rule teardown_force:
    log:
        "logs/teardown_force.log",
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py teardown --force"


rule extend:
    log:
        "logs/extend.log",
    # Within Chameleon's policy: in the lease's last 48 h, to at most 7 days from now.
    localrule: True
    shell:
        "python workflow/scripts/chameleon.py extend"


rule configure:
    log:
        "logs/configure.log",
    # Over SSH, on every node: Docker and the GPU runtime, the repository at this commit, .env, the
    # service stack; on several nodes, each one's firewall trusts the others.
    localrule: True
    shell:
        "python workflow/scripts/remote.py configure"


rule remote_run:
    log:
        "logs/remote_run.log",
    # The pipeline on the node, inside the training container; output streams back. On several
    # nodes, when a dry run on the first says train will run, the others start first (prepare,
    # then launch.py joins torchrun at the first node's private address), each with its own log.
    # The run is recorded in the state file as soon as the first node succeeds (teardown then
    # refuses); then the MLflow run is exported and the DVC outputs pushed off the node.
    localrule: True
    shell:
        "python workflow/scripts/remote.py remote_run"


rule collect:
    log:
        "logs/collect.log",
    # Results, dvc.lock, the DVC outputs (pulled from where remote_run pushed them) and the MLflow
    # run (copied into this project's store), back from the first node; then `dvc commit` here.
    # The other nodes' logs come back as logs/nodes/<name>.log.
    localrule: True
    shell:
        "python workflow/scripts/remote.py collect"
