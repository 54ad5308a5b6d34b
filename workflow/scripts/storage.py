"""The DVC remote follows config/config.yaml's storage switch; credentials stay out of git.

storage.mode local: the folder remote made at creation ('local' in .dvc/config).
storage.mode s3: a remote 's3' (s3://BUCKET/dvc with endpointurl) becomes the default; the keys
from .env go to .dvc/config.local, which DVC keeps out of git. Cheap when nothing changed (one
config read), so the Snakefile and the pull/push helpers call it every time.
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
S3_REMOTE = "s3"


def load_dotenv(root: Path = ROOT) -> None:
    """Secrets from .env into the environment (values already set win)."""
    from stack import read_env

    env_file = root / ".env"
    if env_file.exists():
        for key, value in read_env(env_file).items():
            os.environ.setdefault(key, value)


def _read(path: Path) -> dict[str, dict[str, str]]:
    """DVC's config as {section: {key: value}}; DVC quotes some section names ('remote "x"')."""
    parser = configparser.ConfigParser()
    if path.exists():
        parser.read_string(path.read_text())
    return {name.strip("'"): dict(parser[name]) for name in parser.sections()}


def _dvc(*args: str, root: Path) -> None:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"storage: dvc {' '.join(args[:3])} failed: {proc.stderr.strip()}")


def wanted(storage: dict[str, Any]) -> tuple[str, dict[str, str]]:
    if storage["mode"] == "s3":
        return S3_REMOTE, {"url": f"s3://{storage['bucket']}/dvc", "endpointurl": storage["endpoint"]}
    return "local", {}


def sync_remote(root: Path = ROOT, storage: dict[str, Any] | None = None) -> str:
    """Make the DVC default remote match the config; returns the remote's name."""
    if storage is None:
        storage = yaml.safe_load((root / "config" / "config.yaml").read_text())["storage"]
    name, settings = wanted(storage)
    current = _read(root / ".dvc" / "config")
    section = f'remote "{name}"'
    if settings:
        have = current.get(section, {})
        if section not in current:
            _dvc("remote", "add", name, settings["url"], root=root)
        for key, value in settings.items():
            if have.get(key) != value:
                _dvc("remote", "modify", name, key, value, root=root)
        load_dotenv(root)
        local = _read(root / ".dvc" / "config.local")
        keys = {"access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
                "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY")}
        have_local = local.get(section, {})
        for key, value in keys.items():
            if value and have_local.get(key) != value:
                _dvc("remote", "modify", "--local", name, key, value, root=root)
    if current.get("core", {}).get("remote") != name:
        _dvc("remote", "default", name, root=root)
    return name


def transfer(verb: str, failure: str, root: Path = ROOT) -> str:
    """`dvc push|pull` with the remote storage.mode selects; on failure exit with `failure`, which
    may name the remote as {remote}, followed by DVC's own last line."""
    load_dotenv(root)
    remote = sync_remote(root)
    proc = subprocess.run(["dvc", verb, "--remote", remote], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = f" ({detail[-1]})" if detail else ""
        sys.exit(f"{verb}: " + failure.format(remote=remote, reason=reason))
    return proc.stdout.strip()


if __name__ == "__main__":
    print(f"storage: DVC default remote is '{sync_remote()}'", file=sys.stderr)
