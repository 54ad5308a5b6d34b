"""Large data (issue #13, item 3): the download streams to disk and is hashed once, a wrong pin
leaves nothing behind, the split is train_test_split's without its memory, and the prepared
splits are memory-mapped and the same bytes on every run. Figures: bench/large_data.py."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import Project, generate, make_env
from loopback import https_server, self_signed_cert


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The data module of a generated project, imported from its file (it imports nothing of its own)."""
    tmp = tmp_path_factory.mktemp("large")
    project = generate(tmp, "p", make_env(tmp), "framework=sklearn")
    spec = importlib.util.spec_from_file_location("project_data", project.path / "src/digits_repro/data.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # for its dataclass
    spec.loader.exec_module(module)
    return module


def write_table(path: Path, labels: np.ndarray, features: int = 3) -> None:
    """Feature 0 is the row's number, so a prepared split names the rows it took."""
    rng = np.random.default_rng(len(labels))
    lines = [",".join([*(f"f{i}" for i in range(features)), "label"])]
    lines += [",".join([str(i), *(f"{v:.4f}" for v in rng.normal(size=features - 1)), str(c)])
              for i, c in enumerate(labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


CASES = [(n, classes, size, shuffle, stratify) for n in (30, 257) for classes in (2, 3, 7)
         for size in (0.25, 0.5, 9) for shuffle, stratify in ((True, True), (True, False), (False, False))]


@pytest.mark.parametrize(("n", "classes", "size", "shuffle", "stratify"), CASES)
def test_the_split_is_train_test_splits_byte_for_byte(data: ModuleType, tmp_path: Path, n: int, classes: int,
                                                       size: float, shuffle: bool, stratify: bool) -> None:
    from sklearn.model_selection import train_test_split

    labels = np.random.default_rng(n * classes).integers(0, classes, n)
    labels[:2 * classes] = np.repeat(np.arange(classes), 2)  # every class at least twice
    write_table(tmp_path / "raw" / "t.csv", labels)
    prepare = {"test_size": size, "shuffle": shuffle, "stratify": stratify}
    config = {"seed": n, "data": {"target": "label"}, "prepare": prepare}
    data.prepare(tmp_path / "raw", tmp_path / "out", config)

    x = np.loadtxt(tmp_path / "raw" / "t.csv", delimiter=",", skiprows=1, usecols=range(3)).astype(np.float32)
    y = labels.astype(np.int64)
    expected = train_test_split(x, y, test_size=size, random_state=n if shuffle else None, shuffle=shuffle,
                                stratify=y if stratify else None)
    for name, array in zip(("x_train", "x_test", "y_train", "y_test"), expected, strict=True):
        assert (tmp_path / "out" / f"{name}.npy").read_bytes() == npy(array), name


def test_prepare_imports_neither_pandas_nor_scikit_learn(data: ModuleType, tmp_path: Path) -> None:
    """Arrow's to_numpy() and scikit-learn's split would each import a library the step does not
    use (pandas: 50 MB and 0.2 s; scikit-learn: 130 MB and 1 s): prepare reads Arrow's buffers."""
    write_table(tmp_path / "raw" / "t.csv", np.arange(40) % 3)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('project_data', {data.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        f"module.prepare(__import__('pathlib').Path({str(tmp_path / 'raw')!r}), "
        f"__import__('pathlib').Path({str(tmp_path / 'out')!r}), "
        "{'seed': 0, 'data': {'target': 'label'}, 'prepare': {}})\n"
        "print(sorted(m for m in ('pandas', 'sklearn') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    assert len(np.load(tmp_path / "out" / "y_train.npy")) == 30  # it did prepare: 3/4 of 40 rows


def test_load_split_maps_the_files_and_never_writes_them(data: ModuleType, tmp_path: Path) -> None:
    write_table(tmp_path / "raw" / "t.csv", np.arange(40) % 2)
    data.prepare(tmp_path / "raw", tmp_path / "out", {"seed": 0, "data": {"target": "label"}, "prepare": {}})
    before = (tmp_path / "out" / "x_train.npy").read_bytes()
    x, y = data.load_split(tmp_path / "out", "train")
    assert isinstance(x, np.memmap) and isinstance(y, np.memmap)
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.flags.writeable
    x[:] = 0  # copy-on-write: this process's pages only
    assert (tmp_path / "out" / "x_train.npy").read_bytes() == before
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about read-only arrays
        assert torch.from_numpy(data.load_split(tmp_path / "out", "train")[0]).shape == x.shape


def test_a_recorded_hash_holds_only_while_the_file_is_unchanged(data: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n")
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    data.record_sha256(path, "f" * 64)
    try:
        os.getxattr(path, data.HASH_ATTRIBUTE)
    except OSError:
        pytest.skip("no extended attributes on this file system: every hash is computed")
    assert data.manifest(tmp_path) == {"f.csv": "f" * 64}  # reused, not read
    assert data.sha256_file(path) == real  # pins are checked on the bytes
    time.sleep(0.02)  # past a clock tick, for kernels without fine-grained file times
    path.write_bytes(b"a,b\n1,3\n")  # same size, new mtime
    assert data.manifest(tmp_path) == {"f.csv": hashlib.sha256(b"a,b\n1,3\n").hexdigest()}


def test_a_pulled_file_is_checked_against_its_pin_on_its_bytes(data: ModuleType, tmp_path: Path) -> None:
    """A recorded hash that names the pin (forged, or stale within one clock tick) does not pass a
    file whose bytes differ."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t.csv").write_bytes(b"x,label\n1,0\n")
    pin = hashlib.sha256(b"x,label\n2,0\n").hexdigest()
    data.record_sha256(raw / "t.csv", pin)
    cfg = {"source": "url", "url": "https://example.org/t.csv", "sha256": pin, "target": "label"}
    with pytest.raises(data.DataError, match=r"^data.sha256: pulled t.csv has sha256 [0-9a-f]{64}, expected"):
        data.describe(cfg, raw)
    (raw / "t.csv").write_bytes(b"x,label\n2,0\n")
    assert data.describe(cfg, raw)["files"] == {"t.csv": pin}


@contextmanager
def https_gated(body: bytes, staged: Path, cert: Path, key: Path) -> Iterator[str]:
    """Serve `body` over HTTPS, sending its second half only once the client has written most of the
    first half under `staged` (the project's data/): a client that held the download in memory
    would never get it."""
    half = len(body) // 2

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:half])
            self.wfile.flush()
            deadline = time.monotonic() + 60
            while max((p.stat().st_size for p in staged.glob(".raw-*/*.csv")), default=0) < half // 2:
                if time.monotonic() > deadline:
                    return  # the client gets a short body and fails
                time.sleep(0.05)
            self.wfile.write(body[half:])

    with https_server(Handler, cert, key) as url:
        yield url


@pytest.mark.slow
def test_the_download_streams_and_a_wrong_pin_leaves_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    labels = np.random.default_rng(0).integers(0, 3, 400_000)
    write_table(tmp_path / "table.csv", labels, features=4)
    body = (tmp_path / "table.csv").read_bytes()  # about 12 MB
    sha256 = hashlib.sha256(body).hexdigest()
    cert, key = self_signed_cert(tmp_path)
    env["REQUESTS_CA_BUNDLE"] = str(cert)
    staged = tmp_path / "p" / "data"
    with https_gated(body, staged, cert, key) as base:
        project = generate(tmp_path, "p", env, "framework=sklearn", "data_source=url",
                           f"data_url={base}/table.csv", f"data_sha256={'0' * 64}", "data_target=label")
        project.snakemake("results/environment.json")
        failed = project.snakemake("results/data.json", check=False)
        assert failed.returncode != 0
        refused = f"data.sha256: {base}/table.csv has sha256 {sha256}, expected {'0' * 64}; refused"
        assert refused in failed.stderr
        assert not (staged / "raw").exists() and not list(staged.glob(".raw-*"))

        project.set_config("data.sha256", sha256)
        project.snakemake("results/data.json")
    raw = project.path / "data" / "raw" / "table.csv"
    assert raw.read_bytes() == body and project.json("results/data.json")["files"] == {"table.csv": sha256}
    assert not list(staged.glob(".raw-*"))
    assert_prepared_twice_the_same(project)


def assert_prepared_twice_the_same(project: Project) -> None:
    project.snakemake("data/prepared")
    prepared = project.path / "data" / "prepared"
    def contents() -> dict[str, bytes]:  # Snakemake's empty marker aside
        return {p.name: p.read_bytes() for p in prepared.iterdir() if p.name != ".snakemake_timestamp"}

    first = contents()
    project.run("python", "workflow/scripts/prepare.py")
    assert contents() == first
    assert set(first) == {"meta.json", "x_train.npy", "x_test.npy", "y_train.npy", "y_test.npy"}
    check = ("import sys; from pathlib import Path; sys.path[:0] = ['src']; from digits_repro import data; "
             "x, y = data.load_split(Path('data/prepared'), 'train'); "
             "n = len(x) + len(data.load_split(Path('data/prepared'), 'test')[1]); "
             "print(type(x).__name__, x.shape[1], n)")
    assert project.run("python", "-c", check).stdout.split() == ["memmap", "4", "400000"]
