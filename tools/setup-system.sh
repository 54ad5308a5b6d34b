#!/usr/bin/env bash
# System packages the tests and the demo need (Debian): git for projects and the git data source,
# openssl for the loopback HTTPS server in tests. Installs only what is missing.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"
fi
