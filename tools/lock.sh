#!/usr/bin/env bash
# Regenerate the hashed lock files: this repository's (requirements/dev.lock) and the one every
# generated project receives (templates/project/requirements.lock), constrained to the same
# versions so the test environment satisfies every generated project's environment check.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes
        --index-url https://pypi.org/simple --no-header --quiet)
"$UV" pip compile "${common[@]}" requirements/dev.in -o requirements/dev.lock
"$UV" pip compile "${common[@]}" -c requirements/dev.lock templates/project/requirements.in \
    -o templates/project/requirements.lock
echo "locked: requirements/dev.lock ($(grep -c '==' requirements/dev.lock) pins)," \
     "templates/project/requirements.lock ($(grep -c '==' templates/project/requirements.lock) pins)"
"$UV" pip compile "${common[@]}" -c requirements/dev.lock templates/project/docker/mlflow-requirements.in \
    -o templates/project/docker/mlflow-requirements.lock
