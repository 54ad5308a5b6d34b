"""The tracking and storage stack without Docker: PostgreSQL, an S3 server and the MLflow server.

The same services as docker/compose.yaml, from real parts on loopback: PostgreSQL from the
system's packages (initdb and pg_ctl, as the postgres user when run as root), an S3 endpoint
(workflow/scripts/s3_server.py: moto's S3 API, objects kept on disk, keys required; MinIO itself
is not installable everywhere), and `mlflow server` with the compose file's flags (PostgreSQL
backend, artifacts proxied to s3://, one worker, job execution off, login required). Ports come
from config/config.yaml (tracking.server_uri, storage.endpoint), the secrets from .env.
Everything the services store stays under .stack/ (gitignored) across `down` and `up`.

    python workflow/scripts/stack.py up       # start, wait for health, print the URLs
    python workflow/scripts/stack.py status   # asks each service, with the project's credentials
    python workflow/scripts/stack.py down     # stop everything it started; the data stays
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


class StackError(SystemExit):
    """A service did not come up; the message names it and says why."""


def new_secrets() -> dict[str, str]:
    """Random credentials for a new project (written to .env, mode 600, never to git)."""
    return {
        "POSTGRES_USER": "mlflow",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "POSTGRES_DB": "mlflow",
        "AWS_ACCESS_KEY_ID": "rs" + secrets.token_hex(9),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": secrets.token_urlsafe(24),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }


def write_env(path: Path, values: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# Secrets for the tracking and storage stack. Never commit this file.\n")
        handle.writelines(f"{key}={value}\n" for key, value in values.items())
    path.chmod(0o600)


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _port(url: str, default: int) -> int:
    return urlsplit(url).port or default


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Ports and buckets from config/config.yaml when there is one, else the defaults."""
    config: dict[str, Any] = {}
    config_file = ROOT / "config" / "config.yaml"
    if config_file.exists():
        import yaml

        config = yaml.safe_load(config_file.read_text())
    tracking, storage = config.get("tracking", {}), config.get("storage", {})
    return {
        "mlflow_port": args.mlflow_port or _port(tracking.get("server_uri", ""), 5000),
        "s3_port": args.s3_port or _port(storage.get("endpoint", ""), 9000),
        "postgres_port": args.postgres_port,
        "buckets": [storage.get("artifacts_bucket", "mlflow"), storage.get("bucket", "dvc")],
        "auth": not args.no_auth,
    }


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0
    return waited == 0 and Path(f"/proc/{pid}").exists()


def _wait(what: str, check, timeout: float, log: Path, pid: int) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        if not _alive(pid):
            raise StackError(f"stack: {what} exited while starting; its log ends:\n{log.read_text()[-1500:]}")
        time.sleep(0.1)
    raise StackError(f"stack: {what} was not healthy after {timeout:.0f} s\n{log.read_text()[-1500:]}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start in its own session, so `down` can signal the whole process group."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=log.parent)
    return proc.pid


def _pg(tool: str) -> str:
    for folder in PG_BIN_DIRS:
        if (folder / tool).exists():
            return str(folder / tool)
    found = shutil.which(tool)
    if not found:
        raise StackError(f"stack: PostgreSQL's {tool} is not installed (Debian: apt-get install postgresql)")
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def pg_home(state: Path) -> Path:
    """Where PostgreSQL's files live: in the state folder, unless the postgres user cannot reach
    it (a private parent folder); then in a folder of its own under the system's temp dir."""
    if os.geteuid() != 0:
        return state
    probe = ["runuser", "-u", "postgres", "--", "test", "-x", str(state)]
    if subprocess.run(probe).returncode == 0:
        return state
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    home = Path(tempfile.gettempdir()) / f"reprostack-pg-{digest}"
    home.mkdir(mode=0o755, exist_ok=True)
    return home


def start_postgres(state: Path, port: int, env: dict[str, str]) -> dict[str, Any]:
    home = pg_home(state)
    data, sockets = home / "pg", home / "pg-socket"
    if not _port_free(port):
        raise StackError(f"stack: port {port} for PostgreSQL is taken; pass --postgres-port")
    fresh = not (data / "PG_VERSION").exists()
    for folder in (data, sockets):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    data.chmod(0o700)
    if fresh:
        pwfile = home / "pg-superuser"
        superuser_password = secrets.token_urlsafe(24)
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as handle:
            handle.write(superuser_password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        proc = subprocess.run(_as_postgres([_pg("initdb"), "-D", str(data), "-U", "postgres",
                                            "--auth=scram-sha-256", f"--pwfile={pwfile}"]),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"stack: PostgreSQL's initdb failed in {data}: {proc.stderr.strip()}")
    log = home / "postgres.log"
    log.touch()
    if os.geteuid() == 0:
        shutil.chown(log, "postgres", "postgres")
    proc = subprocess.run(
        _as_postgres([_pg("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o",
                      f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}", "start"]),
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise StackError(f"stack: PostgreSQL did not start: {proc.stderr.strip()}\n{log.read_text()[-800:]}")
    if fresh:
        _create_role(home, port, env)
    _check_login(port, env)
    return {"data": str(data)}


def _create_role(home: Path, port: int, env: dict[str, str]) -> None:
    import psycopg2

    superuser = (home / "pg-superuser").read_text().strip()
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=superuser,
                            dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE ROLE "{env["POSTGRES_USER"]}" LOGIN PASSWORD %s', (env["POSTGRES_PASSWORD"],))
        cur.execute(f'CREATE DATABASE "{env["POSTGRES_DB"]}" OWNER "{env["POSTGRES_USER"]}"')
    conn.close()


def _check_login(port: int, env: dict[str, str]) -> None:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=port, user=env["POSTGRES_USER"],
                         password=env["POSTGRES_PASSWORD"], dbname=env["POSTGRES_DB"],
                         connect_timeout=5).close()
    except psycopg2.OperationalError as error:
        reason = "rejected the password" if "password authentication failed" in str(error) else str(error)
        raise StackError(
            f"stack: PostgreSQL at 127.0.0.1:{port} {reason} for user '{env['POSTGRES_USER']}' "
            "(POSTGRES_PASSWORD in .env); the MLflow server cannot use it"
        ) from None


def start_s3(state: Path, port: int, env: dict[str, str], buckets: list[str]) -> dict[str, Any]:
    if not _port_free(port):
        raise StackError(f"stack: port {port} for the S3 server is taken (storage.endpoint)")
    log = state / "s3.log"
    server_env = {**os.environ, "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                  "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"]}
    pid = _spawn([sys.executable, str(ROOT / "workflow" / "scripts" / "s3_server.py"), "--host", "127.0.0.1",
                  "--port", str(port), "--data", str(state / "s3")], log, server_env)
    _wait("the S3 server", lambda: _http_ok(f"http://127.0.0.1:{port}/_stack/health"), 60, log, pid)
    s3 = _s3_client(port, env)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
    return {"pid": pid}


def _s3_client(port: int, env: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}))


def start_mlflow(state: Path, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    port = cfg["mlflow_port"]
    if not _port_free(port):
        raise StackError(f"stack: port {port} for the MLflow server is taken (tracking.server_uri)")
    backend = (f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
               f"@127.0.0.1:{cfg['postgres_port']}/{env['POSTGRES_DB']}")
    server_env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{cfg['s3_port']}",
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "MLFLOW_ENABLE_TELEMETRY": "false",
        # The backend URI holds a password: hand it over in the environment, not on the command line.
        "MLFLOW_BACKEND_STORE_URI": backend,
    }
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--artifacts-destination", f"s3://{cfg['buckets'][0]}/artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if cfg["auth"]:
        ini = state / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{state / 'basic_auth.db'}\n"
            f"admin_username = {env['MLFLOW_TRACKING_USERNAME']}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # A verified login is trusted for 60 s instead of re-hashing the password (scrypt,
            # ~0.16 s of CPU) on every request: that alone made each request 9-15x slower.
            "auth_cache_ttl_seconds = 60\n"
        )
        server_env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini),
                          MLFLOW_AUTH_ADMIN_PASSWORD=env["MLFLOW_TRACKING_PASSWORD"],
                          MLFLOW_FLASK_SERVER_SECRET_KEY=env["MLFLOW_FLASK_SERVER_SECRET_KEY"])
        cmd += ["--app-name", "basic-auth"]
    log = state / "mlflow.log"
    started = time.monotonic()
    pid = _spawn(cmd, log, server_env)
    _wait("the MLflow server", lambda: _http_ok(f"http://127.0.0.1:{port}/health"), 90, log, pid)
    if (state / "basic_auth.db").exists():
        (state / "basic_auth.db").chmod(0o600)  # password hashes
    return {"pid": pid, "seconds_to_healthy": round(time.monotonic() - started, 2)}


def up(args: argparse.Namespace) -> dict[str, Any]:
    state = args.state.resolve()
    if (state / "stack.json").exists():
        raise StackError(f"stack: already up (state in {state}); run `down` first")
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        state.chmod(0o755)  # the postgres user must reach its data folder
    env_file = args.env_file
    if not env_file.exists():
        write_env(env_file, new_secrets())
    env = read_env(env_file)
    cfg = settings(args)
    record: dict[str, Any] = {"state": str(state), **cfg}
    try:
        record["postgres"] = start_postgres(state, cfg["postgres_port"], env)
        record["s3"] = start_s3(state, cfg["s3_port"], env, cfg["buckets"])
        record["mlflow"] = start_mlflow(state, cfg, env)
    except BaseException:
        _stop(state, record)
        raise
    record["urls"] = {
        "mlflow": f"http://127.0.0.1:{cfg['mlflow_port']}",
        "s3": f"http://127.0.0.1:{cfg['s3_port']}",
        "postgres": f"postgresql://127.0.0.1:{cfg['postgres_port']}/{env['POSTGRES_DB']}",
    }
    (state / "stack.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child (a failed `up`): reap it, or it stays a zombie
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _stop(state: Path, record: dict[str, Any]) -> list[str]:
    stopped = []
    for name in ("mlflow", "s3"):
        if record.get(name, {}).get("pid"):
            _kill_group(record[name]["pid"])
            stopped.append(name)
    data = Path(record.get("postgres", {}).get("data") or pg_home(state) / "pg")
    if (data / "postmaster.pid").exists():
        subprocess.run(_as_postgres([_pg("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        stopped.append("postgres")
    return stopped


def down(args: argparse.Namespace) -> list[str]:
    state = args.state.resolve()
    record_file = state / "stack.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    stopped = _stop(state, record)
    record_file.unlink(missing_ok=True)
    return stopped


def probe(record: dict[str, Any], env: dict[str, str]) -> dict[str, str | None]:
    """Ask each service something only a working one answers, with the project's credentials:
    PostgreSQL a query as the MLflow user, S3 a signed bucket listing, MLflow a logged-in read of
    its store (which also needs its database). None means healthy, else the reason."""
    import base64

    result: dict[str, str | None] = {}
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=record["postgres_port"], user=env["POSTGRES_USER"],
                                password=env["POSTGRES_PASSWORD"], dbname=env["POSTGRES_DB"],
                                connect_timeout=3)
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.close()
        result["postgres"] = None
    except Exception as error:  # psycopg2.OperationalError and friends: report, never raise
        result["postgres"] = " ".join(str(error).split())[:160] or type(error).__name__
    try:
        names = {b["Name"] for b in _s3_client(record["s3_port"], env).list_buckets().get("Buckets", [])}
        missing = [b for b in record["buckets"] if b not in names]
        result["s3"] = f"buckets missing: {', '.join(missing)}" if missing else None
    except Exception as error:  # botocore's connection and client errors
        result["s3"] = " ".join(str(error).split())[:160]
    base = record["urls"]["mlflow"]
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1")
    token = f"{env.get('MLFLOW_TRACKING_USERNAME', '')}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
        result["mlflow"] = None
    except urllib.error.HTTPError as error:
        result["mlflow"] = f"HTTP {error.code} to a logged-in read of its store"
    except (urllib.error.URLError, OSError) as error:
        result["mlflow"] = str(getattr(error, "reason", error))
    return result


def status(args: argparse.Namespace) -> int:
    record_file = args.state.resolve() / "stack.json"
    if not record_file.exists():
        print("stack: down")
        return 1
    record = json.loads(record_file.read_text())
    problems = probe(record, read_env(args.env_file))
    for name, url in record["urls"].items():
        print(f"  {name:9} {'up  ' if problems[name] is None else 'DOWN'} {url}"
              + (f"  ({problems[name]})" if problems[name] else ""))
    bad = [name for name, problem in problems.items() if problem]
    print(f"stack: {'up' if not bad else 'degraded: ' + ', '.join(bad) + ' not working'}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--state", type=Path, default=ROOT / ".stack", help="state folder (gitignored)")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="secrets (made if missing)")
    parser.add_argument("--postgres-port", type=int, default=5432)
    parser.add_argument("--mlflow-port", type=int, help="default: from tracking.server_uri")
    parser.add_argument("--s3-port", type=int, help="default: from storage.endpoint")
    parser.add_argument("--no-auth", action="store_true",
                        help="MLflow without login (for measuring its cost only; the S3 endpoint "
                             "always requires keys, and docker/compose.yaml always asks for a login)")
    args = parser.parse_args(argv)
    if args.action == "up":
        record = up(args)
        print(f"stack: up in {record['mlflow']['seconds_to_healthy']} s (MLflow to healthy)")
        for name, url in record["urls"].items():
            print(f"  {name:9} {url}")
    elif args.action == "down":
        stopped = down(args)
        print("stack: stopped " + (", ".join(stopped) or "nothing (it was not up)"))
    else:
        return status(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
