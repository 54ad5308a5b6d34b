"""Servers on loopback that speak the real protocols, so the real clients do the fetching:
an HTTPS file server (requests), a git daemon (git), and a minimal Hugging Face Hub (huggingface_hub).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (SAN IP), made with the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(server: http.server.ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def https_files(root: Path, cert: Path, key: Path) -> Iterator[str]:
    """Serve `root` over HTTPS on 127.0.0.1; yields the base URL."""
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    with https_server(handler, cert, key) as url:
        yield url


@contextmanager
def https_server(handler: Any, cert: Path, key: Path) -> Iterator[str]:
    """Serve `handler` (an http.server handler class) over HTTPS on 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with _serve(server):
        yield f"https://127.0.0.1:{server.server_address[1]}"


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """`git daemon` exporting every repository under `base`; yields git://127.0.0.1:PORT."""
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class FakeHub:
    """Dataset repos at fixed commits: {(repo_id, commit): {filename: bytes}}."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.requests: list[str] = []

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[(repo_id, commit)] = files
        return commit


def _hub_handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        """GET/HEAD /datasets/{owner}/{name}/resolve/{revision}/{path}, as huggingface_hub asks."""

        def log_message(self, *args: object) -> None:
            pass

        def _lookup(self) -> tuple[str, bytes] | None:
            hub.requests.append(f"{self.command} {self.path}")
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) < 6 or parts[0] != "datasets" or parts[3] != "resolve":
                return None
            repo_id, revision, name = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
            files = hub.repos.get((repo_id, revision))
            if files is None or name not in files:
                return None
            return revision, files[name]

        def _answer(self, body: bool) -> None:
            found = self._lookup()
            if found is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            commit, content = found
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Content-Length", str(len(content)))
            self.send_header("Content-Type", "text/csv")
            self.end_headers()
            if body:
                self.wfile.write(content)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    return Handler


@contextmanager
def hf_hub(hub: FakeHub) -> Iterator[str]:
    """Serve the fake hub over HTTP on loopback; yields the endpoint for HF_ENDPOINT."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _hub_handler(hub))
    with _serve(server):
        yield f"http://127.0.0.1:{server.server_address[1]}"


def wait_for(url: str, timeout: float = 30) -> None:
    """Until a server answers at url (any HTTP status), or fail after timeout seconds."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server on loopback (it enforces bucket policies for anonymous requests, as S3 does);
    yields the endpoint URL."""
    import sys

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{endpoint}/moto-api/")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
