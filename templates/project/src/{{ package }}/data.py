"""Fetch, verify, hash and split the data.

Every source is pinned (a Hugging Face commit, a git commit or a sha256), so a rerun reads the same
bytes or fails saying which pin did not hold. Files land in a temporary folder first and replace
data/raw only when complete and verified.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Pin = dict[str, Any]
CHUNK = 1 << 20


class DataError(SystemExit):
    """The data could not be fetched or did not match its pin; the message says which."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


IGNORED = {".snakemake_timestamp"}  # Snakemake's marker in directory outputs, not data


def manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (sorted: the manifest is deterministic)."""
    return {
        path.relative_to(root).as_posix(): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in IGNORED
    }


def fetch(cfg: dict[str, Any], raw: Path) -> dict[str, Any]:
    """Fetch cfg['source'] into `raw`; return the pin and the per-file hashes for results/data.json."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".raw-", dir=raw.parent))
    try:
        pin = SOURCES[cfg["source"]](cfg, staging)
        files = manifest(staging)
        if raw.exists():
            shutil.rmtree(raw)
        staging.rename(raw)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"source": cfg["source"], "pin": pin, "files": files, "sha256": digest}


def describe(cfg: dict[str, Any], raw: Path) -> dict[str, Any]:
    """The record of data already in `raw` (pulled from the DVC remote): the same shape as fetch's.

    A URL's sha256 pin is checked again here; the other pins were checked when the author fetched,
    and dvc.lock's content hash covers the bytes.
    """
    files = manifest(raw)
    if cfg["source"] == "url":
        name = cfg["url"].rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "data.csv"
        found = files.get(name)
        if found != cfg["sha256"].lower():
            raise DataError(f"data.sha256: pulled {name} has sha256 {found}, expected {cfg['sha256']}; refused")
    pin = {k: v for k, v in cfg.items() if k not in ("source", "target")}
    if cfg["source"] == "sample":
        pin = {"dataset": "sklearn.datasets.load_digits"}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"source": cfg["source"], "pin": pin, "files": files, "sha256": digest}


def _fetch_sample(cfg: dict[str, Any], out: Path) -> Pin:
    """scikit-learn's bundled digits (1,797 8x8 images, 10 classes): offline and versioned."""
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    with (out / "digits.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*(f"pixel_{i}" for i in range(digits.data.shape[1])), "label"])
        for row, label in zip(digits.data.astype(int), digits.target, strict=True):
            writer.writerow([*row.tolist(), int(label)])
    return {"dataset": "sklearn.datasets.load_digits", "scikit-learn": sklearn.__version__}


def _fetch_huggingface(cfg: dict[str, Any], out: Path) -> Pin:
    """One file of a Hugging Face dataset repo at a pinned commit (HF_ENDPOINT is honoured)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    repo, revision, name = cfg["repo_id"], cfg["revision"], cfg["file"]
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, name, repo_type="dataset", revision=revision))
        if meta.commit_hash != revision:
            raise DataError(
                f"data.revision: {repo} answered commit {meta.commit_hash} for {revision}; "
                "the pin does not hold"
            )
        path = hf_hub_download(repo, name, repo_type="dataset", revision=revision)
    except HfHubHTTPError as error:
        raise DataError(f"data: cannot fetch '{name}' of {repo}@{revision}: {error}") from None
    except Exception as error:
        # The hub unreachable: a transport error of its HTTP client (or an OSError); one line.
        if not isinstance(error, OSError) and type(error).__module__.split(".")[0] not in HTTP_CLIENTS:
            raise
        raise DataError(_unreachable(repo, revision, error)) from None
    target = out / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return {"repo_id": repo, "revision": revision, "file": name}


HTTP_CLIENTS = ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def _unreachable(repo: str, revision: str, error: BaseException) -> str:
    import os

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return (f"data: the Hugging Face Hub at {endpoint} is unreachable for {repo}@{revision} ({reason}); "
            "check the network or HF_ENDPOINT. The last good data/raw is kept.")


def _fetch_git(cfg: dict[str, Any], out: Path) -> Pin:
    """One file of a git repository at a pinned commit, checked out with the real git client."""
    repo, commit, name = cfg["repo"], cfg["commit"], cfg["file"]
    with tempfile.TemporaryDirectory(prefix="git-") as tmp:
        _run(["git", "clone", "--quiet", "--no-checkout", repo, tmp], f"data.repo: cannot clone {repo}")
        _run(["git", "-C", tmp, "checkout", "--quiet", "--detach", commit],
             f"data.commit: {commit} is not in {repo}")
        head = _run(["git", "-C", tmp, "rev-parse", "HEAD"], "data.commit: rev-parse failed")
        if head != commit:
            raise DataError(f"data.commit: checked out {head}, expected {commit}")
        source = Path(tmp) / name
        if not source.is_file():
            raise DataError(f"data.file: '{name}' is not a file in {repo}@{commit}")
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return {"repo": repo, "commit": commit, "file": name}


def _fetch_url(cfg: dict[str, Any], out: Path) -> Pin:
    """A file over HTTPS, refused unless its sha256 matches the pinned one."""
    import requests

    url, expected = cfg["url"], cfg["sha256"].lower()
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "data.csv"
    target = out / name
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            with target.open("wb") as handle:
                for block in response.iter_content(CHUNK):
                    digest.update(block)
                    handle.write(block)
    except requests.RequestException as error:
        raise DataError(f"data.url: cannot download {url}: {error}") from None
    if digest.hexdigest() != expected:
        raise DataError(
            f"data.sha256: {url} has sha256 {digest.hexdigest()}, expected {expected}; refused"
        )
    return {"url": url, "sha256": expected}


def _run(cmd: list[str], message: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"{message}: {proc.stderr.strip()}")
    return proc.stdout.strip()


SOURCES: dict[str, Callable[[dict[str, Any], Path], Pin]] = {
    "sample": _fetch_sample,
    "huggingface": _fetch_huggingface,
    "git": _fetch_git,
    "url": _fetch_url,
}


def load_table(raw: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The one CSV table under data/raw as features, integer labels, feature names, class names."""
    tables = sorted(raw.rglob("*.csv"))
    if len(tables) != 1:
        raise DataError(f"data: expected one CSV table in {raw}, found {[t.name for t in tables]}")
    with tables[0].open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], [r for r in rows[1:] if r]
    if target not in header:
        raise DataError(f"data.target: column '{target}' is not in {tables[0].name}; columns: {header}")
    col = header.index(target)
    labels = [row[col] for row in body]
    classes = sorted(set(labels), key=lambda v: (not _is_number(v), float(v) if _is_number(v) else 0, v))
    features = [name for i, name in enumerate(header) if i != col]
    try:
        x = np.array([[float(v) for i, v in enumerate(r) if i != col] for r in body], dtype=np.float32)
    except ValueError as error:
        raise DataError(f"data: a feature column of {tables[0].name} is not numeric: {error}") from None
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in labels], dtype=np.int64)
    return x, y, features, classes


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def prepare(raw: Path, prepared: Path, config: dict[str, Any]) -> None:
    """Seeded, stratified split written as .npy files (byte-for-byte reproducible, unlike .npz)."""
    from sklearn.model_selection import train_test_split

    x, y, features, classes = load_table(raw, config["data"]["target"])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=config["prepare"]["test_size"], random_state=config["seed"], stratify=y
    )
    if prepared.exists():
        shutil.rmtree(prepared)
    prepared.mkdir(parents=True)
    for name, array in (("x_train", x_train), ("x_test", x_test), ("y_train", y_train), ("y_test", y_test)):
        np.save(prepared / f"{name}.npy", array)
    (prepared / "meta.json").write_text(
        json.dumps({"features": features, "classes": classes}, indent=2) + "\n"
    )


def load_split(prepared: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(prepared / f"x_{part}.npy"), np.load(prepared / f"y_{part}.npy")


def classes(prepared: Path) -> list[str]:
    return json.loads((prepared / "meta.json").read_text())["classes"]
