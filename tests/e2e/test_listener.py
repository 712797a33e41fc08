"""The demo sign-in follows where a real uvicorn listens, never LEDGER_APP_URL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from billing_ledger.bootstrap import build
from billing_ledger.http.app import create_app
from tests.support.app import settings_for
from tests.support.databases import sqlite_url
from tests.support.inprocess import bound_socket, serving
from tests.support.server import Server, free_port

pytestmark = pytest.mark.e2e


def try_sign_in(client: httpx.Client) -> tuple[httpx.Response, httpx.Response]:
    """GET /login, then post its form as a browser would; the client keeps any cookie."""
    form = client.get("/login")
    found = re.search(r'name="csrf" value="([^"]+)"', form.text)
    data = {"csrf": found.group(1) if found else "", "user_id": "u_victim", "next": "/billing"}
    return form, client.post("/login", data=data)


def assert_refused(url: str) -> None:
    """No sign-in form, no session for the posted user, no page that offers sign-in."""
    with httpx.Client(base_url=url, timeout=10) as client:
        form, posted = try_sign_in(client)
        assert form.status_code == posted.status_code == 404
        assert "Please sign in through the application" in form.text
        billing = client.get("/billing")
        assert billing.status_code == 403 and "u_victim" not in billing.text
        assert "/login" not in billing.text


def test_serve_on_all_interfaces_with_a_token_serves_no_demo_sign_in(tmp_path: Path) -> None:
    env = {
        "LEDGER_DATABASE_URL": sqlite_url(tmp_path),
        "LEDGER_API_TOKEN": "tok_listener",
        "LEDGER_DEMO_SIGNIN": "",
        "LEDGER_APP_URL": "",  # the default, a loopback URL: it must not matter
    }
    server = Server(env, host="0.0.0.0").start()  # reached through 127.0.0.1 below
    try:
        assert_refused(server.url)
    finally:
        server.stop()


def test_a_real_uvicorn_on_a_non_loopback_socket_refuses_the_enabled_demo_sign_in(
    tmp_path: Path,
) -> None:
    sock = bound_socket("0.0.0.0")
    settings = settings_for(sqlite_url(tmp_path), demo_signin=True, api_token="tok")
    app = create_app(build(settings), listen_host=sock.getsockname()[0])
    with serving(app, sock) as url:
        assert_refused(url)


def test_a_real_uvicorn_on_loopback_with_the_flag_signs_the_user_in(tmp_path: Path) -> None:
    sock = bound_socket("127.0.0.1")
    settings = settings_for(sqlite_url(tmp_path), demo_signin=True)
    app = create_app(build(settings), listen_host=sock.getsockname()[0])
    with serving(app, sock) as url, httpx.Client(base_url=url, timeout=10) as client:
        form, posted = try_sign_in(client)
        assert form.status_code == 200 and posted.status_code == 303
        assert "Signed in as <strong>u_victim</strong>" in client.get("/billing").text


def test_serve_refuses_the_demo_sign_in_on_a_non_loopback_host_in_one_line(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGER_", "STRIPE_"))}
    env |= {
        "LEDGER_DATABASE_URL": sqlite_url(tmp_path),
        "LEDGER_API_TOKEN": "tok_listener",
        "LEDGER_DEMO_SIGNIN": "true",
    }
    command = [sys.executable, "-m", "billing_ledger.cli", "serve", "--host", "0.0.0.0"]
    process = subprocess.Popen(
        [*command, "--port", str(free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:  # it served: the flaw this test is about
        process.kill()
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2, stderr
    reason = stderr.strip().splitlines()
    assert len(reason) == 1, stderr
    assert "0.0.0.0" in reason[0] and "LEDGER_DEMO_SIGNIN" in reason[0]
