"""The training loop without host synchronisation per batch (issue #13, item 2): on the CPU it
computes exactly what the per-batch loop before it computed; on CUDA it reads the device once per
epoch; bench/gpu_loop.py compares it with a bare PyTorch loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_loop  # noqa: E402

PARAMS = {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3, "hidden_units": 32}


def data(rows: int = 150) -> tuple[np.ndarray, np.ndarray]:
    x, y = gpu_loop.synthetic(rows, features=8, classes=10)
    return x, y


def per_batch_fit(model_py: Any, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[nn.Module, list]:
    """The loop as it was: float(loss) and int(correct) read from the device after every batch."""
    model = model_py.build(x.shape[1], 10, PARAMS)
    features = torch.from_numpy(x)
    model.mean.copy_(features.mean(0))
    model.std.copy_(torch.where(features.std(0) > 0, features.std(0), torch.ones(x.shape[1])))
    history = gpu_loop.per_batch_epochs(model, features, torch.from_numpy(y), PARAMS, seed)
    return model.eval(), history


def test_cpu_loop_is_bitwise_the_per_batch_loop() -> None:
    """Same weights and the same history, to the bit, as the loop that synchronised every batch
    (150 rows: the last batch is short)."""
    model_py = gpu_loop.load_model()
    x, y = data()
    runs = []
    for fit in (lambda: model_py.fit(x, y, 10, PARAMS, 7, {"device": "cpu"}),
                lambda: per_batch_fit(model_py, x, y, 7)):
        model_py.seed(7)
        runs.append(fit())
    (new, new_history), (old, old_history) = runs
    assert new_history == old_history
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_split_too_large_for_the_device_goes_over_batch_by_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for a split that does not fit in device memory (each batch copied over) trains
    the same model; here on the CPU, where both paths are exact."""
    model_py = gpu_loop.load_model()
    x, y = data()
    runs = []
    for fits in (True, False):
        monkeypatch.setattr(model_py, "_fits", lambda nbytes, device, fits=fits: fits)
        model_py.seed(3)
        runs.append(model_py.fit(x, y, 10, PARAMS, 3, {"device": "cpu"}))
    (resident, resident_history), (streamed, streamed_history) = runs
    assert resident_history == streamed_history
    for a, b in zip(resident.state_dict().values(), streamed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_shard_splits_every_epoch_evenly() -> None:
    model_py = gpu_loop.load_model()
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model_py.shard(order, 0, 1), order)
    shards = [model_py.shard(order, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded with the first entries
    assert sorted(torch.cat(shards).tolist()) == sorted(order.tolist() + order[:1].tolist())


def test_shard_pads_a_world_larger_than_twice_the_rows() -> None:
    """More processes than rows: the order repeats (as DistributedSampler pads it), every rank
    gets one row, and each row goes to ranks in turn."""
    model_py = gpu_loop.load_model()
    order = torch.tensor([4, 0, 2])
    for world in (7, 8, 3 * 5 + 1):
        shards = [model_py.shard(order, rank, world) for rank in range(world)]
        assert [len(s) for s in shards] == [1] * world
        assert torch.cat(shards).tolist() == (order.tolist() * world)[:world]
    # No more than twice the rows: as before (the first entries once).
    assert torch.equal(torch.cat([model_py.shard(order, rank, 5) for rank in range(5)]),
                       torch.tensor([4, 0, 2, 4, 0]))
    with pytest.raises(ValueError, match="no rows"):
        model_py.shard(torch.tensor([], dtype=torch.int64), 0, 2)


def test_bench_compares_the_loops_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_loop.py"), "--device", "cpu",
                           "--rows", "2048", "--epochs", "1", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ratio fit/bare:" in proc.stdout and "| fit |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["ratio_best"] > 0
    assert set(result["samples_per_s_best"]) == {"bare", "fit"}


@pytest.mark.gpu
def test_cuda_loop_reads_the_device_once_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Host synchronisations grow with epochs, not batches (64 batches per epoch here)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model_py = gpu_loop.load_model()
    x, y = data(4096)
    params = {**PARAMS, "batch_size": 64}
    syncs = {epochs: gpu_loop.count_syncs(
        lambda epochs=epochs: model_py.fit(x, y, 10, {**params, "epochs": epochs}, 0, {"device": "cuda"}))
        for epochs in (1, 3)}
    assert syncs[3] - syncs[1] <= 2 * 2, syncs  # one read per epoch (two with slack)
    _, history = model_py.fit(x, y, 10, params, 0, {"device": "cuda"})
    assert len(history) == params["epochs"] and history[-1]["accuracy"] > 0.5
    monkeypatch.setattr(model_py, "_fits", lambda nbytes, device: False)  # pinned copies per batch
    _, streamed = model_py.fit(x, y, 10, params, 0, {"device": "cuda"})
    assert streamed[-1]["accuracy"] > 0.5
