"""The generated project's training loop against a bare PyTorch loop, side by side (issue #13, item 2).

Both train the same network (the generated model.py's `build`) on the same synthetic data
(digits-shaped: 64 features, 10 classes), with the same batch size, optimiser (Adam, fused on
CUDA), precision (bf16 autocast on CUDA, fp32 on the CPU) and thread count:

- bare: the loop a PyTorch user writes: data on the device, `randperm` on the device, forward,
  loss, backward, step; no metrics at all;
- fit: the generated project's `model.fit`, imported from the template (Copier copies model.py
  verbatim: it is not a .jinja file), which also keeps the per-epoch loss and accuracy and draws
  its order from a seeded CPU generator.

Rounds alternate bare and fit after a warm-up of each; samples/s = rows x epochs / wall time of the
whole call (setup included for both). Ratio = fit / bare on the best round of each (the median is
printed too, and the ratio of samples per CPU second of this process, which load from other
processes on a shared machine does not skew; on CUDA, wall time is the measure). On CUDA the number of host synchronisations fit() makes is counted with
torch.cuda.set_sync_debug_mode: it should grow with epochs, not with batches.

Usage: python bench/gpu_loop.py [--device cpu|cuda] [--rows 65536] [--epochs 3] [--batch-size 64]
       [--rounds 3] [--compile] (JSON in bench/results/gpu_loop_<device>.json)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "templates" / "project" / "src" / "{{ package }}" / "{% if framework == 'pytorch' %}model.py{% endif %}"


def load_model() -> ModuleType:
    """The generated project's model.py, as Copier renders it (copied unchanged)."""
    assert "{{" not in MODEL.read_text(), "model.py became a template: render it instead"
    loader = importlib.machinery.SourceFileLoader("generated_model", str(MODEL))  # no .py suffix
    spec = importlib.util.spec_from_loader("generated_model", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic(rows: int, features: int = 64, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, rows)
    centres = rng.normal(0, 2, (classes, features))
    x = (centres[y] + rng.normal(0, 1, (rows, features))).astype(np.float32)
    return x, y.astype(np.int64)


def per_batch_epochs(model: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                     params: dict[str, Any], seed: int) -> list[dict[str, float]]:
    """Adam over seeded shuffled mini-batches as a person writes it (and as fit() did): loss and
    accuracy read from the device after every batch. The hand-written script's loop, and the
    reference fit() must equal bit for bit on CPU (tests/test_gpu_loop.py)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, params["epochs"] + 1):
        model.train()
        total, correct = 0.0, 0
        for idx in torch.randperm(len(labels), generator=order).split(params["batch_size"]):
            logits = model(features[idx])
            loss = loss_fn(logits.float(), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == labels[idx]).sum())
        history.append({"epoch": epoch, "loss": total / len(labels), "accuracy": correct / len(labels)})
    return history


def bare(model_py: ModuleType, x: np.ndarray, y: np.ndarray, params: dict[str, Any],
         device: torch.device, bf16: bool, compile_: bool) -> None:
    """A plain PyTorch loop over the same network, data, batch size and optimiser."""
    model = model_py.build(x.shape[1], 10, params)
    features, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    model.mean.copy_(features.mean(0))
    model.std.copy_(features.std(0))
    model.to(device)
    step_model = torch.compile(model) if compile_ else model
    optimiser = torch.optim.Adam(model.parameters(), lr=float(params["learning_rate"]),
                                 fused=device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss()
    batch = int(params["batch_size"])
    for _ in range(int(params["epochs"])):
        order = torch.randperm(len(labels), device=device)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if bf16
                        else contextlib.nullcontext())
            with autocast:
                loss = loss_fn(step_model(features[idx]).float(), labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    model.cpu()  # the end of training, as fit() returns its model on the CPU


def timed(run: Any) -> tuple[float, float]:
    """Wall seconds, and this process's CPU seconds (which other load on the machine does not
    inflate: the fairer measure of a CPU loop on a shared machine)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, cpu = time.perf_counter(), time.process_time()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, time.process_time() - cpu


def count_syncs(run: Any) -> int:
    """Host synchronisations the call makes (CUDA only), from torch's sync debug mode."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-units", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (train.num_threads)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both (train.compile)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    model_py = load_model()
    model_py.seed(0)  # what the pipeline does: deterministic algorithms, for both loops
    torch.set_num_threads(args.threads)
    x, y = synthetic(args.rows)
    params = {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": 1e-3,
              "hidden_units": args.hidden_units}
    train = {"device": args.device, "precision": "bf16", "num_threads": args.threads,
             "compile": args.compile}
    bf16 = device.type == "cuda"
    loops = {
        "bare": lambda p: bare(model_py, x, y, p, device, bf16, args.compile),
        "fit": lambda p: model_py.fit(x, y, 10, p, 0, train),
    }
    for loop in loops.values():  # warm-up: CUDA context, kernels, compilation
        loop({**params, "epochs": 1})
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in loops}
    for round_ in range(args.rounds):
        names = list(loops) if round_ % 2 == 0 else list(loops)[::-1]
        for name in names:
            wall, cpu = timed(lambda name=name: loops[name](params))
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    samples = args.rows * args.epochs
    best = {name: samples / min(times) for name, times in seconds.items()}
    median = {name: samples / statistics.median(times) for name, times in seconds.items()}
    per_cpu_s = {name: samples / min(times) for name, times in cpu_seconds.items()}
    result = {
        "device": args.device, "hardware": hardware(device), "torch": torch.__version__,
        "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size,
        "hidden_units": args.hidden_units, "threads": args.threads, "compile": args.compile,
        "precision": "bf16-autocast" if bf16 else "fp32", "rounds": args.rounds,
        "seconds": seconds, "cpu_seconds": cpu_seconds, "samples_per_s_best": best,
        "samples_per_s_median": median, "samples_per_cpu_s_best": per_cpu_s,
        "ratio_best": best["fit"] / best["bare"], "ratio_median": median["fit"] / median["bare"],
        "ratio_cpu_time": per_cpu_s["fit"] / per_cpu_s["bare"],
    }
    if device.type == "cuda":
        result["fit_syncs"] = {str(e): count_syncs(lambda e=e: loops["fit"]({**params, "epochs": e}))
                               for e in (1, 2)}
    print(f"device: {args.device} ({result['hardware']}), torch {torch.__version__}, "
          f"{result['precision']}, compile {args.compile}, threads {args.threads}")
    print(f"{args.rows} rows x {args.epochs} epochs, batch {args.batch_size}, "
          f"hidden {args.hidden_units}, {args.rounds} rounds")
    print("| loop | samples/s (best) | samples/s (median) | samples per CPU second (best) |\n"
          "| --- | ---: | ---: | ---: |")
    for name in loops:
        print(f"| {name} | {best[name]:,.0f} | {median[name]:,.0f} | {per_cpu_s[name]:,.0f} |")
    print(f"ratio fit/bare: {result['ratio_best']:.3f} (best), {result['ratio_median']:.3f} (median), "
          f"{result['ratio_cpu_time']:.3f} (CPU time)")
    if "fit_syncs" in result:
        print(f"host synchronisations in fit(): {result['fit_syncs']['1']} for 1 epoch, "
              f"{result['fit_syncs']['2']} for 2 ({args.rows // args.batch_size} batches per epoch)")
    target = args.json or ROOT / "bench" / "results" / f"gpu_loop_{args.device}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
