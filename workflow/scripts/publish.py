"""publish: make the current complete run the reference, share its data, and commit what a reviewer needs.

    snakemake -c1 publish

In order, stopping with one line at the first thing that fails (nothing is deleted, and nothing is
written before the data is safely on the shared remote):
1. the working tree holds no uncommitted code or config (the reference must name the code that
   made it);
2. every pipeline stage is up to date (Snakemake has just brought them up to date: this rule
   depends on the run record; run it through Snakemake, which decides what is stale, since DVC
   only records what Snakemake produced);
3. data and models are pushed to this machine's DVC remote (storage.mode s3: the shared bucket);
4. the committed .dvc/config names the remote a stranger reads (storage.public_url: read-only
   HTTP(S), checked here without credentials; else the S3 remote, with read-only keys the
   reviewer supplies);
5. reference/ is written from this run, verify reruns against it, dvc.lock is brought up to date;
6. one git commit: reference/, dvc.lock, .dvc/config. Then `git push` is yours.
"""

from __future__ import annotations

import json
import subprocess
import sys

from _step import ROOT, project
from stages import commit_complete_stages
from storage import PUBLIC, last_line, publish_remotes, sync_remote, transfer


def fail(message: str) -> None:
    sys.exit(f"publish: {message}")


def git(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if check and proc.returncode != 0:
        fail(f"git {args[0]} failed: {proc.stderr.strip()}")
    return proc.stdout


def ours(path: str) -> bool:
    """What publish itself writes, or DVC maintains; anything else uncommitted stops it."""
    return path.startswith("reference/") or path in ("dvc.lock", ".dvc/config") or path.endswith(".gitignore")


def uncommitted() -> list[str]:
    lines = git("status", "--porcelain", "--untracked-files=all").splitlines()
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in lines]
    return [path for path in paths if not ours(path)]


def stale_stages() -> list[str]:
    """Stages whose outputs do not match their inputs now (verify is rerun below, so it may be)."""
    from dvc.repo import Repo

    commit_complete_stages(ROOT)  # what Snakemake just produced, into dvc.lock and the cache
    with Repo(str(ROOT)) as repo:
        return sorted({name.split(":")[-1] for name in repo.status()} - {"verify"})


def check_public(remote: str) -> None:
    """Ask the public remote for every object of this run, as a stranger would: an HTTP(S) remote
    carries no credentials."""
    proc = subprocess.run(["dvc", "status", "--cloud", "--remote", remote, "--json"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(last_line(proc))
    missing = json.loads(proc.stdout or "{}")
    if missing:
        raise RuntimeError(f"{len(missing)} output(s) not readable: {', '.join(sorted(missing))}")


def main() -> None:
    config, verify = project("verify")
    storage = config["storage"]
    dirty = uncommitted()
    if dirty:
        more = f" (+{len(dirty) - 5} more)" if len(dirty) > 5 else ""
        fail(f"uncommitted changes in {', '.join(dirty[:5])}{more}: commit or stash them first, so the "
             "reference names the code that made it; nothing was published")
    stale = stale_stages()
    if stale:
        fail(f"the pipeline is not up to date ({', '.join(stale)} changed): run `snakemake --cores all` "
             "first; nothing was published")

    remote = sync_remote(ROOT, storage)
    if remote is None:
        print("publish: no DVC remote on this machine: nothing pushed (reviewers fetch the raw data "
              "from its pin)", file=sys.stderr)
    else:
        transfer("push", "the DVC remote '{remote}' did not take the data{reason}; nothing was "
                 "published (the data stays in .dvc/cache; rerun when the remote is up)", ROOT, remote)
        print(f"publish: data and models pushed to the DVC remote '{remote}'")

    config_file = ROOT / ".dvc" / "config"
    before = config_file.read_text()
    shared = publish_remotes(ROOT, storage)
    if shared == PUBLIC:
        try:
            check_public(PUBLIC)
        except RuntimeError as error:
            config_file.write_text(before)
            fail(f"reviewers cannot read {storage['public_url']} without credentials ({error}): make "
                 "the bucket public-read (MinIO: `mc anonymous set download ALIAS/BUCKET`; S3: a bucket "
                 "policy allowing s3:GetObject to everyone), or set storage.public_url: null so reviewers "
                 "use read-only keys; the data was pushed, nothing else changed")
        print(f"publish: reviewers read data from {storage['public_url']} without credentials")
    elif shared:
        print(f"publish: reviewers read data from the S3 remote '{shared}' with read-only keys of their own "
              "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in .env)")

    target = verify.publish(ROOT, config)
    proc = subprocess.run([sys.executable, "workflow/scripts/verify.py"], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        fail(f"verify failed against the reference just written ({proc.stderr.strip().splitlines()[-1]}); "
             f"{target.name}/ is left for you to inspect, nothing was committed")
    commit_complete_stages(ROOT)
    git("add", "--", "reference", "dvc.lock", ".dvc/config", *[p for p in git(
        "ls-files", "--modified", "--others", "--exclude-standard").splitlines() if p.endswith(".gitignore")])
    if not git("diff", "--cached", "--name-only").strip():
        print("publish: the reference is already published at HEAD; nothing to commit")
        return
    metrics = json.loads((ROOT / "results" / "metrics.json").read_text())
    summary = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
    identity = []
    for key, fallback in (("user.name", "reprostack publish"), ("user.email", "publish@localhost")):
        if not git("config", "--get", key, check=False).strip():
            identity += ["-c", f"{key}={fallback}"]
    git(*identity, "commit", "--quiet", "--no-verify", "-m", f"Publish reference results ({summary})")
    head = git("rev-parse", "--short", "HEAD").strip()
    print(f"publish: committed {head}: reference/, dvc.lock, .dvc/config ({summary}). Share it with "
          "`git push`; reviewers run `snakemake --cores all` in a clone.")


if __name__ == "__main__":
    main()
