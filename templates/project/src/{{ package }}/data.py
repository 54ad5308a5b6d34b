"""Fetch, verify, hash and split the data.

Every source is pinned (a Hugging Face commit, a git commit or a sha256), so a rerun reads the same
bytes or fails saying which pin did not hold. Files land in a temporary folder first and replace
data/raw only when complete and verified.

Tables larger than memory pass through: a download is hashed as it streams to disk, the CSV is
parsed in blocks, and the prepared splits are memory-mapped when read (load_split). Each file's
sha256 is computed once, when it is written, and recorded with the file (record_sha256) so that
later steps reuse it instead of reading the bytes again.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import itertools
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

Pin = dict[str, Any]
CHUNK = 4 << 20  # bytes read, hashed and written at a time: few system calls, little memory


class DataError(SystemExit):
    """The data could not be fetched or did not match its pin; the message says which."""


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read now (no recorded value is trusted)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# A file's sha256 as computed when it was written, kept in an extended attribute of the file
# itself: it moves with the file through renames, adds no file that git or DVC would see, and is
# trusted only while the file's size and modification time (in ns) are those it was recorded
# with, the test DVC's and git's own caches use. Where attributes are unsupported, files are hashed.
HASH_ATTRIBUTE = "user.reprostack.sha256"


def _stamp(path: Path) -> str:
    stat = path.stat()  # the same file (inode), size and modification time: DVC's and git's test
    return f"{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def record_sha256(path: Path, digest: str, stamp: str | None = None) -> None:
    """Record `digest`, just computed over the bytes of `path` (as they were at `stamp`)."""
    try:
        os.setxattr(path, HASH_ATTRIBUTE, f"{stamp or _stamp(path)}:{digest}".encode())
    except (OSError, AttributeError):  # unsupported here (AttributeError: no xattrs on this OS)
        pass


def recorded_sha256(path: Path) -> str:
    """The sha256 recorded with the file while it is unchanged since; otherwise hashed (and recorded)."""
    try:
        stamp, _, digest = os.getxattr(path, HASH_ATTRIBUTE).decode().rpartition(":")
        if len(digest) == 64 and stamp == _stamp(path):
            return digest
    except (OSError, AttributeError, UnicodeDecodeError):
        pass
    before = _stamp(path)
    digest = sha256_file(path)
    if _stamp(path) == before:  # not changed while it was read
        record_sha256(path, digest, before)
    return digest


IGNORED = {".snakemake_timestamp"}  # Snakemake's marker in directory outputs, not data


def manifest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (sorted: the manifest is deterministic)."""
    return {
        path.relative_to(root).as_posix(): recorded_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name not in IGNORED
    }


def manifest_digest(files: dict[str, str]) -> str:
    """One sha256 for a set of files, from their own: what data.json and MLflow's datasets name
    the content by, with no byte read again."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def fetch(cfg: dict[str, Any], raw: Path) -> dict[str, Any]:
    """Fetch cfg['source'] into `raw`; return the pin and the per-file hashes for results/data.json."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    for leftover in raw.parent.glob(f".{raw.name}-*"):  # a killed fetch's partial download
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{raw.name}-", dir=raw.parent))
    try:
        pin = SOURCES[cfg["source"]](cfg, staging)
        files = manifest(staging)  # the sources record each file's hash as they write it
        if raw.exists():
            shutil.rmtree(raw)
        staging.rename(raw)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"source": cfg["source"], "pin": pin, "files": files, "sha256": manifest_digest(files)}


def describe(cfg: dict[str, Any], raw: Path) -> dict[str, Any]:
    """The record of data already in `raw` (pulled from the DVC remote): the same shape as fetch's.

    A URL's sha256 pin is checked again here; the other pins were checked when the author fetched,
    and dvc.lock's content hash covers the bytes.
    """
    files = manifest(raw)
    if cfg["source"] == "url":
        name = cfg["url"].rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "data.csv"
        # A pin is checked on the bytes themselves, never on a recorded hash.
        found = sha256_file(raw / name) if (raw / name).is_file() else None
        if found is not None:
            files[name] = found
        if found != cfg["sha256"].lower():
            raise DataError(f"data.sha256: pulled {name} has sha256 {found}, expected {cfg['sha256']}; refused")
    pin = {k: v for k, v in cfg.items() if k not in ("source", "target")}
    if cfg["source"] == "sample":
        pin = {"dataset": "sklearn.datasets.load_digits"}
    return {"source": cfg["source"], "pin": pin, "files": files, "sha256": manifest_digest(files)}


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
    _copy_hashed(Path(path), out / name)
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
        _copy_hashed(source, out / name)
    return {"repo": repo, "commit": commit, "file": name}


def _fetch_url(cfg: dict[str, Any], out: Path) -> Pin:
    """A file over HTTPS, streamed to disk and hashed in the same pass, refused unless its sha256
    is the pinned one (fetch then discards the staging folder: nothing of it reaches data/raw)."""
    import requests

    url, expected = cfg["url"], cfg["sha256"].lower()
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "data.csv"
    try:
        with requests.get(url, stream=True, timeout=60) as response:
            response.raise_for_status()
            found = _write_hashed(response.iter_content(CHUNK), out / name)
    except requests.RequestException as error:
        raise DataError(f"data.url: cannot download {url}: {error}") from None
    if found != expected:
        raise DataError(f"data.sha256: {url} has sha256 {found}, expected {expected}; refused")
    return {"url": url, "sha256": expected}


def _copy_hashed(source: Path, target: Path) -> str:
    """Copy a file, hashing it on the way: one read of its bytes."""
    with source.open("rb") as handle:
        return _write_hashed(iter(lambda: handle.read(CHUNK), b""), target)


def _write_hashed(blocks: Iterable[bytes | memoryview], target: Path) -> str:
    """Write `blocks` to `target` and record their sha256, computed as they pass; returns it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with target.open("wb") as handle:
        for block in blocks:
            digest.update(block)
            handle.write(block)
    record_sha256(target, digest.hexdigest())
    return digest.hexdigest()


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


# Bytes of CSV parsed at a time. Arrow's streaming reader holds several blocks ahead, so its memory
# grows with this: 1 MiB parses as fast as 16 MiB (2 cores) with a tenth of the memory.
BLOCK = 1 << 20


@dataclass
class Table:
    """A CSV table read in one pass: its features, float32 row by row, in `scratch` (a temporary
    file, so that the split is worked out without them in memory), and each text column (the label,
    a split column) as integer codes for its distinct values."""

    name: str
    features: list[str]
    rows: int
    scratch: IO[bytes]
    codes: dict[str, np.ndarray]  # column: one int32 code a row (taken out once used: see _labels)
    values: dict[str, list[str]]  # column: the values, by code, as written

    def x(self) -> np.ndarray:
        """Every row's features, in memory: the one copy that shuffled rows are gathered from."""
        self.scratch.seek(0)
        return np.fromfile(self.scratch, np.float32, self.rows * len(self.features)).reshape(
            self.rows, len(self.features))

    def x_blocks(self, start: int, stop: int, step: int) -> Iterator[np.ndarray]:
        """Rows start..stop of the features, `step` rows at a time, read from the scratch file."""
        width = 4 * len(self.features)
        for first in range(start, stop, step):
            count = min(step, stop - first)
            block = os.pread(self.scratch.fileno(), count * width, first * width)
            yield np.frombuffer(block, np.float32).reshape(count, len(self.features))


def read_table(path: Path, columns: dict[str, str], scratch: IO[bytes]) -> Table:
    """Parse a CSV table block by block: `columns` (name: the config key that names it) are text,
    every other column is a numeric feature. Values are read as Python's float() reads them (then
    rounded to float32); empty lines are skipped."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    header = _header(path)
    for column, key in columns.items():
        if column not in header:
            raise DataError(f"{key}: column '{column}' is not in {path.name}; columns: {header}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"data: {path.name} names columns {repeated} more than once; names must be unique")
    features = [c for c in header if c not in columns]
    types = {c: pa.string() if c in columns else pa.float64() for c in header}
    convert = pcsv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                  quoted_strings_can_be_null=False)
    ids: dict[str, dict[str, int]] = {c: {} for c in columns}
    codes: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    rows = 0
    try:
        # Arrow on the system allocator (its reading buffers too), so that what parsing frees
        # can be handed back (_trim_heap) before the split's arrays are made.
        pa.set_memory_pool(pa.system_memory_pool())
        for batch in pcsv.open_csv(path, pcsv.ReadOptions(block_size=BLOCK), convert_options=convert):
            block = np.empty((batch.num_rows, len(features)), np.float32)
            for j, name in enumerate(features):
                block[:, j] = _view(batch.column(name))
            scratch.write(memoryview(block).cast("B"))
            for column in columns:
                codes[column].append(_codes(batch.column(column), ids[column]))
            rows += batch.num_rows
    except pa.ArrowInvalid as error:
        raise DataError(_parse_error(path.name, header, str(error))) from None
    scratch.flush()
    _trim_heap()
    return Table(path.name, features, rows, scratch,
                 {c: np.concatenate(codes[c]) if codes[c] else np.zeros(0, np.int32) for c in columns},
                 {c: list(ids[c]) for c in columns})


def _trim_heap() -> None:
    """Hand back to the system what parsing and the split freed: glibc keeps it in its heap, where
    the features' array (a mapping of its own) cannot reuse it."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        header = next((row for row in csv.reader(handle) if row), None)
    if header is None:
        raise DataError(f"data: {path.name} is empty; expected a CSV table with a header row")
    return header


def _codes(column: Any, ids: dict[str, int]) -> np.ndarray:
    """A text column of one block as codes shared by all blocks (new values get the next code)."""
    encoded = column.dictionary_encode()
    lookup = np.array([ids.setdefault(v, len(ids)) for v in encoded.dictionary.to_pylist()], np.int32)
    return lookup[_view(encoded.indices)] if len(lookup) else np.zeros(len(encoded), np.int32)


# Arrow's numeric types that read_table meets (float64 features, dictionary codes) as NumPy's.
_NUMPY_TYPES = {"double": np.float64, "int8": np.int8, "int16": np.int16, "int32": np.int32,
                "int64": np.int64}


def _view(array: Any) -> np.ndarray:
    """A null-free Arrow array of numbers as a NumPy view of its data buffer, not copied. (Arrow's
    own to_numpy() imports pandas to look for its extension types: 50 MB and 0.2 s for nothing.)"""
    dtype = _NUMPY_TYPES.get(str(array.type))
    if dtype is None or array.null_count:
        raise ValueError(f"expected numbers without nulls, got {array.type} with {array.null_count} nulls")
    return np.frombuffer(array.buffers()[1], dtype, count=len(array),
                         offset=array.offset * np.dtype(dtype).itemsize)


def _parse_error(name: str, header: list[str], error: str) -> str:
    """Arrow's reason, with the column named instead of numbered."""
    if "conversion error to double" in error and error.startswith("In CSV column #"):
        index = int(error.removeprefix("In CSV column #").split(":", 1)[0])
        value = error.rsplit(": ", 1)[-1]
        return (f"data: feature column '{header[index]}' of {name} is not numeric ({value}); every "
                "column but data.target and prepare.split_column must be")
    return f"data: cannot read {name} as a CSV table: {error}"


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

Rows = slice | np.ndarray  # the rows of a part: a contiguous range, or indices in order


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
    marking each row train or test. The table is read once; at most one copy of its features is
    in memory (none for an unshuffled split, a test file or the hashing).
    """
    settings = split_settings(config["prepare"])
    target = config["data"]["target"]
    column = settings.get("split_column")
    tables = sorted(raw.rglob("*.csv"))
    if len(tables) != 1:
        raise DataError(f"data: expected one CSV table in {raw}, found {[t.name for t in tables]}")
    if prepared.exists():
        shutil.rmtree(prepared)
    prepared.mkdir(parents=True)
    record: dict[str, Any] = {"mode": "random", **settings}
    with tempfile.TemporaryFile(dir=prepared) as scratch, tempfile.TemporaryFile(dir=prepared) as other:
        columns = {target: "data.target", **({column: "prepare.split_column"} if column else {})}
        table = read_table(tables[0], columns, scratch)
        classes = sorted(table.values[target], key=_class_order)
        y = _labels(table, target, classes)
        if column:
            parts = [(table, y, rows) for rows in _split_by_column(table, column)]
            record["mode"] = "column"
        elif "test_file" in settings:
            test, y_test = _test_table(root or Path.cwd(), settings, target, table.features, classes, other)
            parts = [(table, y, slice(0, table.rows)), (test, y_test, slice(0, test.rows))]
            record["mode"] = "file"
        else:
            parts = [(table, y, rows) for rows in _random_split(y, settings, config["seed"], classes)]
        _trim_heap()
        x = table.x() if any(isinstance(rows, np.ndarray) for _, _, rows in parts) else None
        for part, (source, labels, rows) in zip(("train", "test"), parts, strict=True):
            _write_part(prepared, part, source, x, labels, rows)
    record.update(n_train=_count(parts[0][2]), n_test=_count(parts[1][2]))
    (prepared / "meta.json").write_text(
        json.dumps({"features": table.features, "classes": classes, "split": record}, indent=2) + "\n"
    )


def _labels(table: Table, target: str, classes: list[str]) -> np.ndarray:
    """The label of each row as its index in `classes` (the table's codes are let go: one copy)."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in table.values[target]], np.int32)[table.codes.pop(target)]


def _count(rows: Rows) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _random_split(y: np.ndarray, settings: dict[str, Any], seed: int, classes: list[str]) -> list[Rows]:
    """The rows scikit-learn's train_test_split(x, y, test_size, random_state=seed, shuffle,
    stratify=y) puts in each part (the same draws in the same order, checked against it by the
    reprostack tests), worked out from the labels alone: the features need not be in memory, and
    scikit-learn's import (about 1 s and 130 MB) is not needed."""
    size = settings["test_size"]
    size = int(size) if size >= 1 else size  # a number of rows, or a fraction
    try:
        n_train, n_test = _part_sizes(len(y), size)
        if not settings["shuffle"]:
            if settings["stratify"]:
                raise ValueError("a stratified split needs shuffle")
            return [slice(0, n_train), slice(n_train, n_train + n_test)]
        rng = np.random.RandomState(seed)
        if not settings["stratify"]:
            order = rng.permutation(len(y))  # ShuffleSplit's draw
            return [order[n_test:n_test + n_train], order[:n_test]]
        return _stratified(y, n_train, n_test, rng, classes)
    except ValueError as error:
        raise DataError(f"prepare.test_size: {settings['test_size']} cannot split {len(y)} rows"
                        f"{' by class' if settings['stratify'] else ''}: {error}") from None


def _part_sizes(n: int, size: float) -> tuple[int, int]:
    """Rows to train and to test: `size` rows to test, or that fraction of them rounded up."""
    if (isinstance(size, int) and not 0 < size < n) or (isinstance(size, float) and not 0 < size < 1):
        raise ValueError(f"test_size={size} should be either positive and smaller than the number of "
                         f"samples {n} or a float in the (0, 1) range")
    n_test = size if isinstance(size, int) else math.ceil(size * n)
    if n_test >= n:
        raise ValueError(f"with {n} rows and test_size={size} the train set would be empty")
    return n - n_test, n_test


def _stratified(y: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState,
                classes: list[str]) -> list[np.ndarray]:
    """StratifiedShuffleSplit's first split, in index arrays where it builds Python lists (about
    40 bytes a row)."""
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < 2:
        few = [c for c, n in zip(classes, counts, strict=True) if n < 2]
        raise ValueError(f"classes {few} have a single row; stratifying needs at least 2 of each")
    if min(n_train, n_test) < len(classes):
        raise ValueError(f"each part needs at least one row of each of the {len(classes)} classes")
    by_class = np.split(np.argsort(y, kind="stable"), np.cumsum(counts)[:-1])
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train, test = [], []
    for members, k, t in zip(by_class, n_i, t_i, strict=True):
        picked = members.take(rng.permutation(len(members)), mode="clip")
        train.append(picked[:k])
        test.append(picked[k:k + t])
    del by_class
    return [rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))]


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows of each class in a part of `draws` rows: proportional, the remainders given out by
    largest fraction, ties broken at random (scikit-learn's utils.extmath._approximate_mode)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add = min(len(tied), need)
            floored[rng.choice(tied, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def _split_by_column(table: Table, column: str) -> list[np.ndarray]:
    marks = [v.strip().lower() for v in table.values[column]]
    if set(marks) != {"train", "test"}:
        raise DataError(f"prepare.split_column: column '{column}' of {table.name} must mark each row "
                        f"train or test, with some of each; found: {', '.join(sorted(set(marks)))}")
    codes = table.codes.pop(column)
    return [np.flatnonzero(np.isin(codes, [i for i, m in enumerate(marks) if m == part]))
            for part in ("train", "test")]


def _test_table(root: Path, settings: dict[str, Any], target: str, features: list[str],
                classes: list[str], scratch: IO[bytes]) -> tuple[Table, np.ndarray]:
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
    table = read_table(path, {target: "data.target"}, scratch)
    if table.features != features:
        raise DataError(f"prepare.test_file: the columns of {name} are {table.features}; the training "
                        f"table's are {features}")
    unknown = sorted(set(table.values[target]) - set(classes), key=_class_order)
    if unknown:
        raise DataError(f"prepare.test_file: labels {unknown} of {name} are not in the training "
                        f"table (classes: {classes})")
    return table, _labels(table, target, classes)


def _write_part(prepared: Path, part: str, table: Table, x: np.ndarray | None, y: np.ndarray,
                rows: Rows) -> None:
    """x_<part>.npy and y_<part>.npy: a range streams from the scratch file, indices gather from `x`."""
    n, width = _count(rows), len(table.features)
    step = max(1, CHUNK // max(1, 4 * width))
    if isinstance(rows, slice):
        x_blocks = table.x_blocks(rows.start, rows.stop, step)
        y_blocks = (y[i:min(i + step, rows.stop)] for i in range(rows.start, rows.stop, step))
    else:
        assert x is not None
        x_blocks = (x[rows[i:i + step]] for i in range(0, n, step))
        y_blocks = (y[rows[i:i + step]] for i in range(0, n, step))
    write_npy(prepared / f"x_{part}.npy", np.float32, (n, width), x_blocks)
    write_npy(prepared / f"y_{part}.npy", np.int64, (n,), y_blocks)


def write_npy(path: Path, dtype: Any, shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> None:
    """An .npy file written block by block, byte for byte what np.save writes for the whole array;
    hashed on the way (and the hash recorded), so nothing reads it back to hash it."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(map(int, shape))})
    body = (memoryview(np.ascontiguousarray(block, dtype)).cast("B") for block in blocks)
    _write_hashed(itertools.chain([header.getvalue()], body), path)


def load_split(prepared: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The features and labels of a part, memory-mapped: read from disk as they are used, so a split
    larger than memory still loads. Copy-on-write: writable, as torch.from_numpy wants, but writes
    stay in this process and never reach the files."""
    return (np.load(prepared / f"x_{part}.npy", mmap_mode="c"),
            np.load(prepared / f"y_{part}.npy", mmap_mode="c"))


def classes(prepared: Path) -> list[str]:
    return json.loads((prepared / "meta.json").read_text())["classes"]
