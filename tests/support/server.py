"""A real uvicorn serving the app in a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import httpx

from billing_ledger.process import default_workers


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One `billing-ledger serve` process."""

    def __init__(
        self,
        env: Mapping[str, str],
        port: int | None = None,
        workers: int | None = 1,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port or free_port()
        self.host = host  # what serve binds; the tests always connect through 127.0.0.1
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a pipe nobody drains blocks the server once its buffer fills.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (open for the server's lifetime; closed in stop())
            prefix="ledger-server-", suffix=".log", delete=False
        )

    def start(self, timeout: float = 30) -> Server:
        """Start and wait until /healthz answers and every HTTP process has started (a
        process starting late would still be creating its tables, e.g. one a test drops)."""
        command = [
            sys.executable,
            "-m",
            "billing_ledger.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]
        if self.workers is not None:  # None: serve's own default
            command += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(
            command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()[-2000:]}")
            try:
                answered = httpx.get(f"{self.url}/healthz", timeout=1).status_code in (200, 503)
            except httpx.HTTPError:
                answered = False
            if answered and self.started() >= (self.workers or default_workers()):
                return self
            time.sleep(0.1)
        raise RuntimeError("server did not answer /healthz in time")

    def started(self) -> int:
        """How many HTTP processes have finished their startup."""
        return self.output().count("Application startup complete.")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown, no flush."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def output(self) -> str:
        """What the server has logged so far."""
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()


@contextmanager
def running(env: Mapping[str, str], workers: int | None = 1) -> Iterator[Server]:
    """A started server, stopped afterwards."""
    server = Server(env, workers=workers).start()
    try:
        yield server
    finally:
        server.stop()
