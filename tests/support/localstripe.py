"""localstripe, a fake Stripe, as a subprocess on 127.0.0.1 for integration tests.

localstripe is GPL: we only run it as a separate process and talk to it over HTTP. Its own
command binds every interface and pickles its store to one fixed file under /tmp after each
write, so parallel runs would share (and clobber) one store. The launcher below binds
127.0.0.1 itself, turns the on-disk copy off, and never loads an old one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import stripe

API_KEY = "sk_test_localstripe"

# Run in the subprocess: import localstripe quietly, stop its disk writes, serve on the
# socket the parent bound (its file descriptor is inherited and named in argv).
_LAUNCHER = """
import socket, sys, warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from aiohttp import web
    from localstripe import resources, server
resources.Store.dump_to_disk = lambda self: None
sock = socket.socket(fileno=int(sys.argv[1]))
web.run_app(server.app, sock=sock, print=None, access_log=None, handle_signals=True)
"""


class LocalStripe:
    """One localstripe process listening on a socket bound to 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> LocalStripe:
        """Start the process and wait until it answers."""
        fd = self.sock.fileno()
        env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(fd)],
            pass_fds=(fd,),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                error = self.process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                raise RuntimeError(f"localstripe exited: {error}")
            try:
                httpx.get(f"{self.url}/v1/customers", auth=(API_KEY, ""), timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("localstripe did not answer in time")

    def stop(self) -> None:
        """Terminate the process group and close the listening socket."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.sock.close()


@contextmanager
def running_localstripe() -> Iterator[str]:
    """A started localstripe; yields its base URL; stops it afterwards."""
    server = LocalStripe().start()
    try:
        yield server.url
    finally:
        server.stop()


def flush(url: str) -> None:
    """Empty localstripe's whole store (objects, events); webhooks stay registered."""
    httpx.delete(f"{url}/_config/data", timeout=10).raise_for_status()


def register_webhook(
    url: str, target: str, secret: str, events: list[str] | None = None, hook_id: str = "ledger"
) -> None:
    """Have localstripe sign and POST its events to `target` (one attempt, no retries)."""
    # It sends each event a second after making it, to every webhook registered by then, so
    # a test may receive events an earlier test made: match what you wait for by id.
    config: dict[str, object] = {"url": target, "secret": secret}
    if events is not None:
        config["events"] = events
    httpx.post(f"{url}/_config/webhooks/{hook_id}", json=config, timeout=10).raise_for_status()


def unregister_webhook(url: str, hook_id: str = "ledger") -> None:
    """Point a registered webhook at a closed port: localstripe has no delete."""
    closed = f"http://127.0.0.1:{_closed_port()}/"
    register_webhook(url, closed, "whsec_unused", hook_id=hook_id)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stripe_client(url: str, api_key: str = API_KEY) -> stripe.StripeClient:
    """The official SDK's client, pointed at localstripe, without retries of its own."""
    return stripe.StripeClient(api_key, base_addresses={"api": url}, max_network_retries=0)


def list_events(url: str, api_key: str = API_KEY) -> list[dict[str, Any]]:
    """Every event localstripe holds, as raw JSON dicts (its order: oldest first)."""
    events: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100}
        if after:
            params["starting_after"] = after
        page = httpx.get(f"{url}/v1/events", params=params, auth=(api_key, ""), timeout=10)
        page.raise_for_status()
        body = page.json()
        events += body["data"]
        if not body["has_more"] or not body["data"]:
            return events
        after = body["data"][-1]["id"]


@pytest.fixture(scope="session")
def localstripe_url() -> Iterator[str]:
    """One localstripe for the whole session; tests that need a clean store call flush()."""
    with running_localstripe() as url:
        yield url
