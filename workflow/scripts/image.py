"""image: build the training image (docker/Dockerfile) with the Docker SDK, and record it.

With no reachable Docker engine (a laptop without Docker, CI) it says so in one line and records
that; every step that needs no engine still runs. With an engine, results/image.json holds the
image id, tag and the base image's digest, and the track step logs them in the MLflow run.
"""

import re
import sys

from _step import ROOT, load_config, write_json

config = load_config()
dockerfile = ROOT / "docker" / "Dockerfile"
base = re.search(r"^FROM\s+(\S+)", dockerfile.read_text(), re.M)
record = {"dockerfile": "docker/Dockerfile", "base_image": base.group(1) if base else None}
try:
    import docker
    from docker.errors import DockerException

    client = docker.from_env(timeout=10)
    client.ping()
except (ImportError, DockerException, OSError) as error:
    reason = " ".join(str(error).split())[:160]
    print(f"image: no Docker engine reachable ({reason}); skipped the image build, "
          "every other step runs without it", file=sys.stderr)
    write_json("results/image.json", {**record, "status": "no-engine"})
    sys.exit(0)

tag = f"{config['project']['name']}:train"
try:
    image, _ = client.images.build(path=str(ROOT), dockerfile="docker/Dockerfile", tag=tag, rm=True)
except DockerException as error:
    sys.exit(f"image: the build of docker/Dockerfile failed: {error}")
write_json("results/image.json", {
    **record, "status": "built", "tag": tag, "id": image.id,
    "repo_digests": image.attrs.get("RepoDigests", []),
})
print(f"image: built {tag} ({image.id})")
