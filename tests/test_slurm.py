"""Cluster execution: the pipeline as SLURM jobs (`snakemake --profile workflow/profiles/slurm`)
on a real one-node SLURM started on loopback (tests/slurm.py), and where each step ran recorded
in the MLflow run (workflow/scripts/placement.py, tracking.placement_tags)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Project, generate
from slurm import PARTITION, slurm_cluster

sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
from placement import job_resources, visible_gpus, where

JOB_STEPS = {"environment", "image", "data", "prepare", "train", "evaluate"}
LOCAL_STEPS = {"track", "verify"}  # localrules: they run where Snakemake runs


def test_job_resources_come_from_the_cluster_section() -> None:
    config = {"cluster": {"partition": "gpu", "account": None,
                          "default": {"mem_mb": 2000, "runtime_min": 30, "gpus": 0},
                          "steps": {"train": {"cpus": 8, "gpus": 2}}}}
    assert job_resources(config, "train") == {
        "mem_mb": 2000, "runtime": 30, "gpu": 2, "cpus_per_task": 8, "slurm_partition": "gpu"}
    assert job_resources(config, "data") == {"mem_mb": 2000, "runtime": 30, "gpu": 0,
                                             "slurm_partition": "gpu"}
    # The environment step records the hardware: train's kind of node, unless it names its own.
    assert job_resources(config, "environment") == job_resources(config, "train")
    config["cluster"]["steps"]["environment"] = {"cpus": 1}
    assert job_resources(config, "environment")["cpus_per_task"] == 1
    assert job_resources(config, "environment")["gpu"] == 2
    config["cluster"]["account"] = "lab"
    assert job_resources(config, "data")["slurm_account"] == "lab"
    assert job_resources({}, "train") == {}  # no cluster section: Snakemake's defaults


def test_visible_gpus_without_torch(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, tmp_path) == 0
    assert visible_gpus({"SLURM_GPUS_ON_NODE": "4"}, tmp_path) == 4
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert visible_gpus({}, tmp_path) == 2


def test_placement_names_the_slurm_job() -> None:
    inside = where("train", {"SLURM_JOB_ID": "42", "SLURM_JOB_PARTITION": "gpu",
                             "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2",
                             "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert (inside["slurm_job_id"], inside["slurm_partition"], inside["nodes"]) == ("42", "gpu", 2)
    assert (inside["nodelist"], inside["gpus_per_node"]) == ("n[1-2]", 4)
    outside = where("train", {"CUDA_VISIBLE_DEVICES": ""})
    assert outside["slurm_job_id"] is None and outside["nodes"] == 1
    assert outside["host"] == outside["nodelist"] == socket.gethostname()


def tags(project: Project) -> dict[str, str]:
    run_id = project.json("results/run.json")["run_id"]
    return dict(project.sql("SELECT key, value FROM tags WHERE run_uuid = ?", run_id))


def metrics(project: Project) -> dict[str, float]:
    run_id = project.json("results/run.json")["run_id"]
    return dict(project.sql("SELECT key, value FROM latest_metrics WHERE run_uuid = ?", run_id))


@pytest.mark.slow
def test_pipeline_as_slurm_jobs_matches_the_local_run(tmp_path: Path, env: dict[str, str]) -> None:
    project = generate(tmp_path, "p", env)
    project.set_config("cluster.steps", {"trian": {"gpus": 0}})
    refused = project.snakemake("-n", check=False)
    assert refused.returncode != 0
    assert "cluster.steps.trian: unknown key; did you mean cluster.steps.train?" in refused.stderr
    # The test cluster's partition (not its default one) and requests that fit its one node.
    project.set_config("cluster.partition", PARTITION)
    project.set_config("cluster.default", {"mem_mb": 500, "runtime_min": 20, "gpus": 0})
    project.set_config("cluster.steps", {"train": {"mem_mb": 800, "runtime_min": 40}})
    project.run("git", "commit", "-qam", "cluster settings of the test cluster")
    local = project.copy_to(tmp_path / "local")

    with slurm_cluster(tmp_path / "slurm") as cluster:
        # No accounting on the test cluster: squeue answers for job states (MinJobAge=300). The
        # plugin checks first after 4 s, then 10 s later each time no job has finished: a job
        # here takes 6 to 15 s.
        submit = ["timeout", "-k", "10", "480", "snakemake", "--profile", "workflow/profiles/slurm",
                  "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "4"]
        proc = subprocess.Popen(submit, cwd=project.path, env=cluster.client_env(project.env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The same project on this machine, meanwhile, holding an earlier run's record of verify
        # (verify runs after track: the run must get this run's record, not that one).
        (local.path / "logs" / "placement").mkdir(parents=True, exist_ok=True)
        (local.path / "logs" / "placement" / "verify.json").write_text(
            json.dumps({"host": "an-earlier-host", "slurm_job_id": None, "nodes": 1, "gpus_per_node": 0}))
        local.snakemake()
        out, _ = proc.communicate()
        jobs = {comment.removeprefix("rule_"): (job, partition, state, memory, limit)
                for job, comment, partition, state, memory, limit in cluster.squeue("%i %k %P %T %m %l")}
    assert proc.returncode == 0, out[-4000:]

    # Snakemake's own account of the submissions: "Job 5 has been submitted with SLURM jobid 3
    # (log: .../slurm_logs/rule_data/3.log)". squeue agrees, in the configured partition, with the
    # configured memory and time.
    submitted = dict(re.findall(r"submitted with SLURM jobid \d+ \(log: \S+/rule_(\w+)/(\d+)\.log", out))
    assert set(submitted) == JOB_STEPS == set(jobs), out[-4000:]
    for step, job_id in submitted.items():
        # environment records the hardware: it asks for the node train asks for.
        memory, limit = ("800M", "40:00") if step in ("train", "environment") else ("500M", "20:00")
        assert jobs[step] == (job_id, PARTITION, "COMPLETED", memory, limit)
    assert all(f"localrule {step}:" in out for step in LOCAL_STEPS)

    # Each step recorded where it ran, and the MLflow run holds it.
    recorded = tags(project)
    for step in JOB_STEPS:
        placement = project.json(f"logs/placement/{step}.json")
        assert (placement["slurm_job_id"], placement["slurm_partition"]) == (submitted[step], PARTITION)
        assert recorded[f"reprostack.step.{step}.slurm_job_id"] == submitted[step]
    for step in LOCAL_STEPS:
        assert project.json(f"logs/placement/{step}.json")["slurm_job_id"] is None
    assert "reprostack.step.track.slurm_job_id" not in recorded
    assert recorded["reprostack.step.track.host"] == recorded["reprostack.step.verify.host"] == (
        socket.gethostname())
    assert (recorded["reprostack.step.train.nodes"], recorded["reprostack.step.train.gpus_per_node"],
            recorded["reprostack.step.train.nnodes"], recorded["reprostack.step.train.nproc_per_node"]
            ) == ("1", "0", "1", "1")

    # Locally: hosts, no SLURM job; and the same results either way.
    local_tags = tags(local)
    hosts = {k.split(".")[2]: v for k, v in local_tags.items()
             if k.startswith("reprostack.step.") and k.endswith(".host")}
    assert set(hosts) >= JOB_STEPS | LOCAL_STEPS and set(hosts.values()) == {socket.gethostname()}
    assert not [k for k in local_tags if k.endswith(".slurm_job_id")]
    assert project.json("results/metrics.json") == local.json("results/metrics.json")
    assert metrics(project) == metrics(local)
