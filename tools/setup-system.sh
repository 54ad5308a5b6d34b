#!/usr/bin/env bash
# System packages the tests and the demo need (Debian), installed only when missing:
# git (projects, the git data source), openssl (the loopback HTTPS server in tests),
# PostgreSQL's server binaries (the service stack without Docker), npm (the Compose schema).
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
command -v npm >/dev/null || need+=(npm)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
