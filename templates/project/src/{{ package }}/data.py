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


def load_table(raw: Path, target: str, drop: tuple[str, ...] = ()
               ) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """The one CSV table under data/raw as features, integer labels, feature names, class names.

    `drop` names columns that are neither features nor the label (prepare.split_column).
    """
    tables = sorted(raw.rglob("*.csv"))
    if len(tables) != 1:
        raise DataError(f"data: expected one CSV table in {raw}, found {[t.name for t in tables]}")
    header, body = _read_csv(tables[0], target, "data.target")
    x, labels, features = _columns(header, body, target, drop, tables[0].name)
    classes = sorted(set(labels), key=_class_order)
    index = {c: i for i, c in enumerate(classes)}
    return x, np.array([index[v] for v in labels], dtype=np.int64), features, classes


def _read_csv(path: Path, column: str, key: str) -> tuple[list[str], list[list[str]]]:
    """Header and non-empty rows of a CSV table that must have `column` (named by config `key`)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], [r for r in rows[1:] if r]
    if column not in header:
        raise DataError(f"{key}: column '{column}' is not in {path.name}; columns: {header}")
    return header, body


def _columns(header: list[str], body: list[list[str]], target: str, drop: tuple[str, ...], name: str
             ) -> tuple[np.ndarray, list[str], list[str]]:
    """Features (float32), labels (as written) and feature names of a table's rows."""
    skip = {header.index(target), *(header.index(c) for c in drop)}
    features = [column for i, column in enumerate(header) if i not in skip]
    try:
        x = np.array([[float(v) for i, v in enumerate(r) if i not in skip] for r in body], dtype=np.float32)
    except ValueError as error:
        raise DataError(f"data: a feature column of {name} is not numeric: {error}") from None
    return x.reshape(len(body), len(features)), [row[header.index(target)] for row in body], features


def _class_order(value: str) -> tuple[bool, float, str]:
    return (not _is_number(value), float(value) if _is_number(value) else 0, value)


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


# The random split's settings where the config leaves them out (the config check refuses the
# contradictions: stratify without shuffle, a fractional number of rows).
SPLIT_DEFAULTS = {"shuffle": True, "stratify": True, "test_size": 0.25}


def split_settings(prepare: dict[str, Any]) -> dict[str, Any]:
    """prepare.* as the split uses it: the random split's defaults filled in, a test file or split
    column as written. MLflow records these (params prepare.*), and data/prepared/meta.json."""
    if "test_file" in prepare or "split_column" in prepare:
        return dict(prepare)
    return {**SPLIT_DEFAULTS, **prepare}


def prepare(raw: Path, prepared: Path, config: dict[str, Any], root: Path | None = None) -> None:
    """Split data/raw into train and test .npy files (byte-for-byte reproducible, unlike .npz).

    prepare.* chooses how (see split_settings): a seeded random split, stratified or not, of a
    fraction or a number of rows; an unshuffled one (the first rows train, the last test); the rows
    of a separate, sha256-pinned test table (`root`, the project, resolves its path); or a column
    marking each row train or test.
    """
    settings = split_settings(config["prepare"])
    target = config["data"]["target"]
    column = settings.get("split_column")
    x, y, features, classes = load_table(raw, target, (column,) if column else ())
    record: dict[str, Any] = {"mode": "random", **settings}
    if column:
        x_train, x_test, y_train, y_test = _split_by_column(raw, column, x, y)
        record["mode"] = "column"
    elif "test_file" in settings:
        x_train, y_train = x, y
        x_test, y_test = _test_table(root or Path.cwd(), settings, target, features, classes)
        record["mode"] = "file"
    else:
        x_train, x_test, y_train, y_test = _random_split(x, y, settings, config["seed"])
    if prepared.exists():
        shutil.rmtree(prepared)
    prepared.mkdir(parents=True)
    for name, array in (("x_train", x_train), ("x_test", x_test), ("y_train", y_train), ("y_test", y_test)):
        np.save(prepared / f"{name}.npy", array)
    record.update(n_train=len(y_train), n_test=len(y_test))
    (prepared / "meta.json").write_text(
        json.dumps({"features": features, "classes": classes, "split": record}, indent=2) + "\n"
    )


def _random_split(x: np.ndarray, y: np.ndarray, settings: dict[str, Any], seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import train_test_split

    size = settings["test_size"]
    size = int(size) if size >= 1 else size  # a number of rows, or a fraction
    try:
        return train_test_split(x, y, test_size=size, random_state=seed if settings["shuffle"] else None,
                                shuffle=settings["shuffle"], stratify=y if settings["stratify"] else None)
    except ValueError as error:
        raise DataError(f"prepare.test_size: {settings['test_size']} cannot split {len(y)} rows"
                        f"{' by class' if settings['stratify'] else ''}: {error}") from None


def _split_by_column(raw: Path, column: str, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    (table,) = sorted(raw.rglob("*.csv"))
    header, body = _read_csv(table, column, "prepare.split_column")
    marks = np.array([row[header.index(column)].strip().lower() for row in body])
    if set(marks) != {"train", "test"}:
        raise DataError(f"prepare.split_column: column '{column}' of {table.name} must mark each row "
                        f"train or test, with some of each; found: {', '.join(sorted(set(marks)))}")
    train, test = marks == "train", marks == "test"
    return [x[train], x[test], y[train], y[test]]


def _test_table(root: Path, settings: dict[str, Any], target: str, features: list[str],
                classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of prepare.test_file, refused unless its sha256 is prepare.test_sha256 and its
    columns and labels are those of the training table."""
    name = settings["test_file"]
    path = root / name
    if not path.is_file():
        raise DataError(f"prepare.test_file: {name} is not a file in the project")
    found = sha256_file(path)
    if found != settings["test_sha256"]:
        raise DataError(f"prepare.test_sha256: {name} has sha256 {found}, the config pins "
                        f"{settings['test_sha256']}; refused (set test_sha256 if the new bytes are meant)")
    header, body = _read_csv(path, target, "data.target")
    x, labels, names = _columns(header, body, target, (), path.name)
    if names != features:
        raise DataError(f"prepare.test_file: the columns of {name} are {names}; the training "
                        f"table's are {features}")
    unknown = sorted(set(labels) - set(classes), key=_class_order)
    if unknown:
        raise DataError(f"prepare.test_file: labels {unknown} of {name} are not in the training "
                        f"table (classes: {classes})")
    index = {c: i for i, c in enumerate(classes)}
    return x, np.array([index[v] for v in labels], dtype=np.int64)


def load_split(prepared: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(prepared / f"x_{part}.npy"), np.load(prepared / f"y_{part}.npy")


def classes(prepared: Path) -> list[str]:
    return json.loads((prepared / "meta.json").read_text())["classes"]
