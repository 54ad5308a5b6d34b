"""The S3 remote's transfer settings (storage.TRANSFER_SETTINGS): written where DVC reads them, and
taken up by DVC's S3 filesystem. Behaviour only; the speed is bench/dvc_transfer.py's job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_env

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import storage

S3 = {"mode": "s3", "bucket": "data", "endpoint": "http://127.0.0.1:9"}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repository, S3 keys in the environment, and transfer settings to write (the
    mechanism is tested with a value of its own, whatever the shipped TRANSFER_SETTINGS hold)."""
    monkeypatch.setattr(storage, "TRANSFER_SETTINGS", {**storage.TRANSFER_SETTINGS, "jobs": "3"})
    root = tmp_path / "project"
    root.mkdir()
    env = make_env(tmp_path)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    return root


def test_shipped_transfer_settings_are_remote_options_dvc_accepts() -> None:
    from dvc.config_schema import REMOTE_SCHEMAS

    assert set(storage.TRANSFER_SETTINGS) <= {str(k) for k in REMOTE_SCHEMAS["s3"]}
    assert all(isinstance(v, str) for v in storage.TRANSFER_SETTINGS.values())
    if "jobs" in storage.TRANSFER_SETTINGS:
        assert int(storage.TRANSFER_SETTINGS["jobs"]) >= 1


def test_sync_remote_writes_transfer_settings_to_config_local(repo: Path) -> None:
    assert storage.sync_remote(repo, S3) == storage.SHARED
    local = storage.read(repo / ".dvc" / "config.local")
    remote = local['remote "shared"']
    for key, value in storage.TRANSFER_SETTINGS.items():
        assert remote[key] == value
    assert remote["url"] == "s3://data/dvc" and remote["endpointurl"] == S3["endpoint"]
    assert local["core"]["remote"] == storage.SHARED
    # Nothing for the committed config during a run.
    assert 'remote "shared"' not in storage.read(repo / ".dvc" / "config")

    # A second run with nothing changed writes nothing (the file is left as it was).
    before = (repo / ".dvc" / "config.local").stat().st_mtime_ns
    storage.sync_remote(repo, S3)
    assert (repo / ".dvc" / "config.local").stat().st_mtime_ns == before

    # A value changed by hand is put back.
    subprocess.run(["dvc", "remote", "modify", "--local", "shared", "jobs", "1"], cwd=repo, check=True)
    storage.sync_remote(repo, S3)
    assert storage.read(repo / ".dvc" / "config.local")['remote "shared"']["jobs"] == "3"


def test_dvc_s3_filesystem_takes_the_settings(repo: Path) -> None:
    """What push and pull use: DVC's S3 filesystem for the remote gets jobs from the config, and
    dvc_objects passes it to s3fs as max_concurrency for a single file."""
    from dvc.repo import Repo

    storage.sync_remote(repo, S3)
    with Repo(str(repo)) as dvc_repo:
        odb = dvc_repo.cloud.get_remote_odb(storage.SHARED)
        assert odb.fs.protocol == "s3"
        assert odb.fs.jobs == 3
        assert hasattr(odb.fs.fs, "max_concurrency")  # s3fs: generic._put passes jobs to it


def test_publish_writes_transfer_settings_without_keys(repo: Path) -> None:
    assert storage.publish_remotes(repo, S3) == storage.SHARED
    text = (repo / ".dvc" / "config").read_text()
    shared = storage.read(repo / ".dvc" / "config")['remote "shared"']
    for key, value in storage.TRANSFER_SETTINGS.items():
        assert shared[key] == value
    assert "test-secret" not in text and "access_key_id" not in text


def test_a_secret_that_begins_with_a_dash_is_written_and_never_shown(
        repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's generated keys (token_urlsafe) begin with "-" one time in 64: DVC's command line
    must take it as a value, and a failure must not print it."""
    secret = "-6zBWqM0p3XDAKU6rG38KNQmGdkgE33QiFFf_x84"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    assert storage.sync_remote(repo, S3) == storage.SHARED
    assert storage.read(repo / ".dvc" / "config.local")['remote "shared"']["secret_access_key"] == secret

    # The command line as it was before "--" (DVC refuses it, echoing the secret): masked.
    with pytest.raises(SystemExit) as failed:
        storage._dvc("remote", "modify", "--local", "shared", "secret_access_key", secret, root=repo,
                     hidden=secret)
    assert "unrecognized arguments" in str(failed.value) and secret not in str(failed.value)
    assert "***" in str(failed.value)
