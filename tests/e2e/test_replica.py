"""A Replica follows a real server's change feed: every user, every change, resumable."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from billing_ledger.client import LedgerClient, Replica
from tests.support.lifecycle import Lifecycle, httpx_poster
from tests.support.server import Server
from tests.support.signing import SECRET

pytestmark = pytest.mark.e2e


def _until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _subscribe_many(url: str, users: list[str], status: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:

        def post(path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
            return http.post(path, content=body, headers=headers)

        def one(user: str) -> None:
            response = Lifecycle(post, user).subscription_created(status)
            assert response.status_code == 200, response.text

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, users))


def _snapshot_users(url: str) -> int:
    """How many users the feed has recorded (with whatever features)."""
    return len(httpx.get(f"{url}/v1/changes/snapshot", timeout=10).json()["features"])


def test_a_replica_loaded_once_answers_every_one_of_a_thousand_users(server: Server) -> None:
    pro = [f"u_pro_{i}" for i in range(500)]
    lapsed = [f"u_lapsed_{i}" for i in range(500)]
    _subscribe_many(server.url, pro, "active")
    _subscribe_many(server.url, lapsed, "canceled")
    _until(lambda: _snapshot_users(server.url) == len(pro) + len(lapsed))
    replica = Replica(server.url, wait=2)
    with replica:
        assert replica.wait_ready(timeout=10)
        assert all(replica.allowed(u, "pro") for u in pro)
        assert not any(replica.allowed(u, "pro") for u in lapsed)
        assert all(replica.allowed(u, "core") for u in [*pro, *lapsed, "u_never_seen"])
        assert replica.features("u_never_seen") == frozenset({"core"})
        assert replica.loads == 1


def test_a_webhook_that_changes_features_reaches_the_replica(server: Server) -> None:
    seen = []
    replica = Replica(server.url, wait=2, on_change=seen.append)
    with replica:
        assert replica.wait_ready(timeout=10)
        assert not replica.allowed("u_new", "pro")
        life = Lifecycle(httpx_poster(server.url), "u_new")
        life.subscribe()
        assert replica.wait_until(lambda r: r.allowed("u_new", "pro"), timeout=10)
        life.subscription_deleted()
        assert replica.wait_until(lambda r: not r.allowed("u_new", "pro"), timeout=10)
    assert [(c.features_before, c.features_after) for c in seen] == [
        ({"core"}, {"core", "pro"}),
        ({"core", "pro"}, {"core"}),
    ]
    assert seen[0].event_id in {e for e in _event_ids(server.url, life)}


def _event_ids(url: str, life: Lifecycle) -> set[str]:
    with LedgerClient(url) as client:
        return {c["event_id"] for c in client.history(life.user)}


def test_a_restarted_replica_resumes_from_its_position(server: Server, tmp_path: Path) -> None:
    state = tmp_path / "replica.json"
    first = Lifecycle(httpx_poster(server.url), "u_first")
    first.subscribe()
    with Replica(server.url, wait=2, state_file=state) as replica:
        assert replica.wait_until(lambda r: r.allowed("u_first", "pro"), timeout=10)
        stopped_at = replica.position
    later = Lifecycle(httpx_poster(server.url), "u_later")
    later.subscribe()  # while no replica runs
    with Replica(server.url, wait=2, state_file=state) as again:
        assert again.ready and again.position == stopped_at  # from the file, before any request
        assert again.wait_until(lambda r: r.allowed("u_later", "pro"), timeout=10)
        assert again.allowed("u_first", "pro")
        assert again.loads == 0  # resumed: no initial load


def _sse(url: str, headers: dict[str, str], count: int) -> list[dict[str, object]]:
    """The first `count` change events of a stream."""
    found: list[dict[str, object]] = []
    with httpx.stream(
        "GET", f"{url}/v1/changes", headers={"accept": "text/event-stream", **headers}, timeout=10
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "" and "data" in event:
                change = orjson.loads(event["data"])
                assert int(event["id"]) == change["position"]
                found.append(change)
                if len(found) == count:
                    return found
                event = {}
            elif ":" in line and not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.strip()
    return found


def _long_poll(url: str, after: int, count: int) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    with LedgerClient(url) as client:
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {found} arrived"
            page = client.changes(after, limit=2, wait=5)
            found += page["changes"]
            after = page["next"]
    return found


def test_server_sent_events_and_long_polls_give_the_same_sequence(server: Server) -> None:
    for user in ("u_a", "u_b", "u_c"):
        life = Lifecycle(httpx_poster(server.url), user)
        life.subscribe()
        life.subscription_deleted()
    polled = _long_poll(server.url, 0, 6)
    streamed = _sse(server.url, {}, 6)
    assert streamed == polled
    positions = [c["position"] for c in polled]
    assert positions == sorted(set(positions))  # increasing, none twice
    resumed = _sse(server.url, {"last-event-id": str(positions[1])}, 4)
    assert resumed == polled[2:]
    with LedgerClient(server.url) as client:
        assert client.changes(positions[-1], wait=0.5) == {"changes": [], "next": positions[-1]}


def test_feed_positions_hold_across_a_restart_and_redeliveries(database_url: str) -> None:
    env = {"LEDGER_DATABASE_URL": database_url, "STRIPE_WEBHOOK_SECRET": SECRET}
    server = Server(env).start()
    try:
        life = Lifecycle(httpx_poster(server.url), "u_r")
        life.subscribe()
        before = _long_poll(server.url, 0, 1)
    finally:
        server.stop()
    server = Server(env).start()
    try:
        life.post = httpx_poster(server.url)
        life.subscription_deleted()
        after = _long_poll(server.url, 0, 2)
        assert after[0] == before[0]
        assert after[1]["features_after"] == ["core"]
        assert after[1]["position"] > after[0]["position"]
    finally:
        server.stop()
