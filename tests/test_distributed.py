"""Multi-process training with torch.distributed (issue #14, item 2): train.distributed launches
torchrun (gloo on the CPU, NCCL on GPUs); rank 0 alone writes; a fixed world size is deterministic
on the CPU; one process trains as before; what cannot scale out is refused, naming the key."""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Project, generate, make_env, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
import config_check  # noqa: E402
import launch  # noqa: E402


def free_port() -> int:
    """A rendezvous port nobody else uses now (tests and other projects may run beside these)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Project]:
    tmp = tmp_path_factory.mktemp("dist")
    env = make_env(tmp)
    return {framework: generate(tmp, framework, env, f"framework={framework}")
            for framework in ("pytorch", "sklearn")}


def refusal(project: Project, **train: Any) -> str | None:
    config = copy.deepcopy(project.config)
    config["train"].update(train)
    try:
        config_check.validate(config, root=project.path)
    except config_check.ConfigError as error:
        return str(error)
    return None


def test_torchrun_command_line_and_defaults() -> None:
    train = {"framework": "pytorch", "num_threads": 2,
             "distributed": {"nproc_per_node": 2, "nnodes": 3, "master_port": 29611}}
    argv = launch.torchrun_argv(train, 1, "10.0.0.5")
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    options = dict(zip(argv[3:-1:2], argv[4:-1:2], strict=True))
    assert options == {"--nnodes": "3", "--nproc-per-node": "2", "--node-rank": "1",
                       "--master-addr": "10.0.0.5", "--master-port": "29611"}
    assert argv[-1] == "workflow/scripts/train_rank.py"
    assert launch.world_size(train) == 6 and launch.is_distributed(train)
    assert launch.local_threads(train) == 4
    assert launch.schema_defaults() == {"nnodes": 1, "nproc_per_node": 1, "backend": "auto",
                                        "master_port": 29500}
    assert not launch.is_distributed({"framework": "pytorch"})
    assert launch.backend({"device": "cpu", "distributed": {"nproc_per_node": 2}}) == "gloo"


def test_nccl_without_a_gpu_is_refused_before_training() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit, match=r"^train.distributed.backend: 'nccl' needs a CUDA GPU"):
        launch.backend({"device": "auto", "distributed": {"nproc_per_node": 2, "backend": "nccl"}})


def test_several_nodes_without_the_others_started_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnodes 2 on node 0 with nothing that started the other nodes: one line, before torchrun."""
    def no_torchrun(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torchrun started")

    monkeypatch.setattr(launch, "node_env", no_torchrun)
    train = {"device": "cpu", "distributed": {"nnodes": 2, "nproc_per_node": 1}}
    for env in ({}, {"REPROSTACK_MASTER_ADDR": ""}):
        with pytest.raises(SystemExit) as refused:
            launch.run_node(train, None, env=env)
        assert str(refused.value) == (
            "train.distributed.nnodes: 2 needs the other 1 node(s) started (python "
            "workflow/scripts/launch.py --node-rank I --master-addr ADDR on each) and "
            "REPROSTACK_MASTER_ADDR set here; accepted: nnodes 1, or a Chameleon lease with "
            "chameleon.count: 2 (snakemake remote_run)")
    # With the rendezvous address set (remote_run sets it on the first node), it goes on.
    with pytest.raises(AssertionError, match="torchrun started"):
        launch.run_node(train, None, env={"REPROSTACK_MASTER_ADDR": "10.0.0.5"})


def test_more_processes_than_gpus_are_refused_before_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA each process takes a GPU of its own: more processes than visible GPUs is one line
    naming the key, the value and the count (not an invalid device ordinal from every rank)."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for backend in ("auto", "nccl", "gloo"):
        train = {"device": "auto", "distributed": {"nproc_per_node": 3, "backend": backend}}
        with pytest.raises(SystemExit) as refused:
            launch.backend(train)
        assert str(refused.value) == (
            "train.distributed.nproc_per_node: 3 processes on this node need one CUDA GPU each, "
            "but 2 GPU(s) are visible; accepted: nproc_per_node at most 2, or train.device: cpu (gloo)")
    assert launch.backend({"device": "auto", "distributed": {"nproc_per_node": 2}}) == "nccl"
    assert launch.backend({"device": "cpu", "distributed": {"nproc_per_node": 3}}) == "gloo"


def test_a_worker_node_checks_and_sets_what_node_0_does(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """launch.py --node-rank I (a worker node) refuses what run_node refuses and gives torchrun the
    same environment (OMP_NUM_THREADS from train.num_threads)."""
    yaml = pytest.importorskip("yaml")
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "config").mkdir()
    config = tmp_path / "config" / "config.yaml"
    monkeypatch.setattr(launch, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    started = []
    monkeypatch.setattr(launch.os, "execve", lambda path, argv, env: started.append((argv, env)))

    train = {"device": "auto", "num_threads": 3,
             "distributed": {"nnodes": 2, "nproc_per_node": 2, "backend": "nccl", "master_port": 29612}}
    config.write_text(yaml.safe_dump({"train": train}))
    with pytest.raises(SystemExit, match=r"^train.distributed.backend: 'nccl' needs a CUDA GPU"):
        launch.main(["--node-rank", "1", "--master-addr", "10.0.0.5"])
    assert not started

    train["distributed"]["backend"] = "gloo"
    config.write_text(yaml.safe_dump({"train": train}))
    launch.main(["--node-rank", "1", "--master-addr", "10.0.0.5"])
    ((argv, env),) = started
    assert argv == launch.torchrun_argv(train, 1, "10.0.0.5")
    assert env["OMP_NUM_THREADS"] == "3"


def test_config_check_names_what_cannot_scale_out(projects: dict[str, Project]) -> None:
    pytorch, sklearn = projects["pytorch"], projects["sklearn"]
    assert refusal(pytorch, distributed={"nproc_per_node": 2, "backend": "gloo"}, compile=True) is None
    assert refusal(sklearn, distributed={"nproc_per_node": 2}) == (
        "config/config.yaml: train.distributed: not read when train.framework is sklearn; "
        "accepted: framework")
    assert refusal(sklearn, compile=True).startswith("config/config.yaml: train.compile: not read")
    assert refusal(pytorch, distributed={"nproc_per_node": 2}, device="cpu") is None
    assert refusal(pytorch, distributed={"backend": "nccl"}, device="cpu") == (
        "config/config.yaml: train.distributed.backend: 'nccl' needs CUDA, but train.device is "
        "'cpu'; accepted: gloo or auto (gloo on the CPU)")
    assert refusal(pytorch, distributed={"nprocs_per_node": 2}) == (
        "config/config.yaml: train.distributed.nprocs_per_node: unknown key; did you mean "
        "train.distributed.nproc_per_node?")
    assert "0 is less than the minimum of 1" in refusal(pytorch, distributed={"nnodes": 0})

    # A model of its own that does not declare DISTRIBUTED = True: refused, naming the key.
    model = pytorch.path / "src" / "digits_repro" / "model.py"
    original = model.read_text()
    try:
        model.write_text(original.replace("DISTRIBUTED = True\n", ""))
        assert refusal(pytorch, distributed={"nproc_per_node": 2}) == (
            "config/config.yaml: train.distributed: 2 processes (nnodes 1 x nproc_per_node 2) need "
            "a model whose fit() trains its shard under DDP, and this project's model "
            f"({model}) does not declare DISTRIBUTED = True (see contract.py); accepted: nnodes 1 "
            "and nproc_per_node 1")
        assert refusal(pytorch, distributed={"nproc_per_node": 1}) is None
    finally:
        model.write_text(original)


# Imported by every Python process of the failing run (PYTHONPATH): rank 1 of train_rank.py waits,
# once done, until rank 0 has written its staged history, then fails.
FAIL_RANK_1 = """
import atexit, os, sys, time

def _fail():
    if os.environ.get("RANK") != "1" or not sys.argv[0].endswith("train_rank.py"):
        return
    staged = os.environ.get("REPROSTACK_HISTORY", "")
    for _ in range(1200):
        if staged and os.path.exists(staged):
            break
        time.sleep(0.1)
    with open(os.environ["FAILED_RANK_SAW"], "w") as saw:
        saw.write("history staged\\n" if staged and os.path.exists(staged) else "no history\\n")
    os._exit(3)

atexit.register(_fail)
"""


def tags(project: Project, run_id: str) -> dict[str, str]:
    return dict(project.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))


def model_files(project: Project) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (project.path / "models").iterdir()
            if p.name != ".snakemake_timestamp"}


@pytest.mark.slow
def test_two_gloo_processes_through_snakemake(tmp_path: Path, env: dict[str, str]) -> None:
    """torchrun with 2 CPU processes: rank 0 alone writes (one model, one MLflow run), the world
    size, backend and seeds per rank are recorded, and a second run gives the same bytes."""
    runs = []
    for name in ("first", "second"):
        project = generate(tmp_path, name, env)
        project.set_config("model.epochs", 5)
        project.set_config("train.distributed", {"nproc_per_node": 2, "master_port": free_port()})
        project.snakemake("train", "evaluate", "track") if name == "first" else project.snakemake(
            "train", "evaluate")
        runs.append(project)
    first, second = runs

    assert "train: torchrun, 2 processes (1 node(s) x 2), backend gloo" in (
        first.path / "logs" / "train.log").read_text()
    assert set(model_files(first)) == {"model.pt", "training.json"}
    training = first.json("models/training.json")
    assert training["distributed"] | {"data_shard": None} == {
        "world_size": 2, "backend": "gloo", "nnodes": 1, "nproc_per_node": 2,
        "rank_seeds": [42, 43], "data_order_seed": 42, "data_shard": None}
    assert [row["epoch"] for row in first.json("results/history.json")] == [1, 2, 3, 4, 5]

    (run_id,) = [r for (r,) in first.sql("SELECT run_uuid FROM runs")]
    recorded = tags(first, run_id)
    assert recorded["train.distributed.world_size"] == "2"
    assert recorded["train.distributed.backend"] == "gloo"
    assert recorded["train.distributed.rank_seeds"] == "[42, 43]"
    assert recorded["train.distributed.data_order_seed"] == "42"
    params = dict(first.sql("SELECT key, value FROM params WHERE run_uuid = ?", run_id))
    assert params["train.distributed.nproc_per_node"] == "2"
    assert "train.distributed.master_port" not in params  # a launch detail: moving it changes nothing
    assert first.sql("SELECT COUNT(*) FROM logged_models")[0][0] == 1

    # The same world size, another run: the same model bytes and metrics.
    assert model_files(first) == model_files(second)
    assert first.json("results/metrics.json") == second.json("results/metrics.json")
    assert first.json("results/history.json") == second.json("results/history.json")

    # Its rendezvous port taken: one line naming the setting; the last good model is kept.
    port = first.config["train"]["distributed"]["master_port"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = first.run("python", "workflow/scripts/train.py", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
        f"train.distributed.master_port: {port} is in use on this machine")
    assert model_files(first) == model_files(second)

    # Rank 1 fails after rank 0 wrote the model and the history (staged) of another training (3
    # epochs): models/ and results/history.json both stay as they were, to the byte.
    before = model_files(first), (first.path / "results" / "history.json").read_bytes()
    first.set_config("model.epochs", 3)
    hook = tmp_path / "failing-rank"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAIL_RANK_1)
    env = {**first.env, "PYTHONPATH": f"{hook}{os.pathsep}{first.env.get('PYTHONPATH', '')}",
           "FAILED_RANK_SAW": str(tmp_path / "rank1.txt")}
    proc = run(["python", "workflow/scripts/train.py"], first.path, env, check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith(
        "train: torchrun exited with status"), proc.stdout + proc.stderr
    assert (tmp_path / "rank1.txt").read_text() == "history staged\n"  # rank 0 had written it
    assert (model_files(first), (first.path / "results" / "history.json").read_bytes()) == before
    assert not list(first.path.glob(".models.*")), "the staging folder is cleaned up"


@pytest.mark.slow
def test_one_process_trains_in_the_pipeline_as_before(tmp_path: Path, env: dict[str, str]) -> None:
    """nproc_per_node 1 is no distribution at all: no torchrun, the bytes of the default run."""
    project = generate(tmp_path, "p", env)
    project.set_config("model.epochs", 5)
    project.snakemake("train")
    default = model_files(project), project.json("results/history.json")
    assert project.json("models/training.json")["distributed"] == {
        "world_size": 1, "backend": "none", "nnodes": 1, "nproc_per_node": 1, "rank_seeds": [42],
        "data_order_seed": 42, "data_shard": "all"}
    project.set_config("train.distributed", {"nproc_per_node": 1, "nnodes": 1})
    project.snakemake("train", "--forcerun", "train")
    assert "torchrun" not in (project.path / "logs" / "train.log").read_text()
    assert (model_files(project), project.json("results/history.json")) == default
    # ...so its parameters are the default run's too: a strict verify against a reference made
    # without train.distributed passes.
    package = project.config["project"]["package"]
    shown = project.run("python", "-c", f"import json, yaml, sys; sys.path.insert(0, 'src'); "
                        f"from {package}.tracking import run_params; "
                        "print(json.dumps(run_params(yaml.safe_load(open('config/config.yaml')))['train']))")
    assert "distributed" not in json.loads(shown.stdout)


@pytest.mark.gpu
@pytest.mark.slow
def test_two_gpus_over_nccl(tmp_path: Path, env: dict[str, str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs two CUDA GPUs (one per process)")
    project = generate(tmp_path, "p", env)
    project.set_config("model.epochs", 5)
    project.set_config("train.distributed", {"nproc_per_node": 2, "master_port": free_port()})
    project.snakemake("train", "evaluate", "track")
    (run_id,) = [r for (r,) in project.sql("SELECT run_uuid FROM runs")]
    recorded = tags(project, run_id)
    assert recorded["train.distributed.backend"] == "nccl" and recorded["train.device"] == "cuda"
    assert recorded["train.distributed.world_size"] == "2"
    assert project.json("results/metrics.json")["accuracy"] > 0.8
