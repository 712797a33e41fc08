"""`Replica`: every user's features in process, loaded once and kept current from /v1/changes.

The initial load is `GET /v1/changes/snapshot` (every recorded user's features at one feed
position, and the default plans' features for everyone else); from there a background thread
long-polls `GET /v1/changes?after=POS` and applies each change in position order. Checks
then cost a dictionary look-up, with no network call.

Staleness is the time since the start of the last request the ledger answered: a change
committed before that start is in the map. Past `max_staleness` (or before the initial
load), `allowed` answers `fail_open` (False by default: fail closed).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from billing_ledger.background import Background

log = logging.getLogger("billing_ledger.client")

DEFAULT_WAIT = 25.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
PAGE = 1000


@dataclass(frozen=True)
class Change:
    """One change of the feed."""

    position: int
    user_id: str
    at: int
    event_id: str | None
    event_type: str | None
    features_before: frozenset[str]
    features_after: frozenset[str]
    reason: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Change:
        """A change object of `GET /v1/changes`."""
        return cls(
            position=int(body["position"]),
            user_id=str(body["user_id"]),
            at=int(body["at"]),
            event_id=body.get("event_id"),
            event_type=body.get("event_type"),
            features_before=frozenset(body["features_before"]),
            features_after=frozenset(body["features_after"]),
            reason=str(body.get("reason", "")),
        )


class Replica:
    """An in-memory map of every user's features, following the ledger's change feed."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        max_staleness: float | None = None,
        fail_open: bool = False,
        on_change: Callable[[Change], None] | None = None,
        state_file: str | Path | None = None,
        wait: float = DEFAULT_WAIT,
        timeout: float = 10.0,
        **httpx_args: Any,
    ) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        # Long polls hold the request up to `wait`: the read timeout must outlast them.
        self.wait = min(wait, max_staleness / 2) if max_staleness else wait
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, read=self.wait + timeout),
            **httpx_args,
        )
        self.max_staleness = max_staleness
        self.fail_open = fail_open
        self.on_change = on_change
        self.state_file = Path(state_file) if state_file is not None else None
        self.loads = 0  # initial loads done (a restart from a position does none)
        self.last_error: str | None = None
        self._features: dict[str, frozenset[str]] = {}
        self._default: frozenset[str] = frozenset()
        self._position = 0
        self._loaded = False
        self._fresh_at = float("-inf")
        self._changed = threading.Condition()
        self._background = Background("replica", self._run, join_seconds=self.wait + 15)
        self._stopping = self._background.stopping
        self._resume()

    # -- the checks (no network) ---------------------------------------------------------

    def allowed(self, user_id: str, feature: str) -> bool:
        """Whether the user may use `feature`; `fail_open` when not loaded or too stale."""
        if not self._loaded or (
            self.max_staleness is not None
            and time.monotonic() - self._fresh_at > self.max_staleness
        ):
            return self.fail_open
        return feature in self._features.get(user_id, self._default)

    def features(self, user_id: str) -> frozenset[str]:
        """The user's features as last known (the default plans' for a user never seen)."""
        return self._features.get(user_id, self._default)

    @property
    def position(self) -> int:
        """The feed position applied."""
        return self._position

    @property
    def ready(self) -> bool:
        """Whether the initial load is done."""
        return self._loaded

    @property
    def staleness(self) -> float:
        """Seconds since the start of the last request the ledger answered (inf before any)."""
        return time.monotonic() - self._fresh_at

    @property
    def users(self) -> int:
        """How many users have recorded features."""
        return len(self._features)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Replica:
        """Load (unless resuming) and follow the feed in a background thread."""
        self._background.start()
        return self

    def stop(self) -> None:
        """Stop following (the map stays; `start()` resumes from `position`)."""
        self._background.stop()
        self._save()

    def close(self) -> None:
        """Stop and close the connections."""
        self.stop()
        self._http.close()

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait for the initial load; False when `timeout` passes first."""
        return self.wait_until(lambda replica: replica.ready, timeout)

    def wait_until(self, condition: Callable[[Replica], bool], timeout: float) -> bool:
        """Wait until `condition(self)` holds after some update; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            try:
                if not self._loaded:
                    self._load()
                self._follow()
                backoff = BACKOFF_FIRST
            except (httpx.HTTPError, ValueError, KeyError) as e:
                self._failed(f"{type(e).__name__}: {e}")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[float, Any]:
        started = time.monotonic()
        response = self._http.get(path, params=params)
        if not response.is_success:
            raise ValueError(f"{path} answered {response.status_code}: {response.text[:200]}")
        return started, response.json()

    def _load(self) -> None:
        started, body = self._get("/v1/changes/snapshot")
        features = {u: frozenset(f) for u, f in body["features"].items()}
        with self._changed:
            self._features = features
            self._default = frozenset(body["default_features"])
            self._position = int(body["next"])
            self._loaded = True
            self._fresh(started)
        self.loads += 1

    def _follow(self) -> None:
        params = {"after": str(self._position), "limit": str(PAGE), "wait": f"{self.wait:g}"}
        started, body = self._get("/v1/changes", params)
        self._apply([Change.from_json(c) for c in body["changes"]], int(body["next"]), started)

    def _apply(self, changes: Iterable[Change], next_position: int, started: float) -> None:
        applied = []
        with self._changed:
            for change in changes:
                if change.position <= self._position:
                    continue  # never twice
                self._features[change.user_id] = change.features_after
                self._position = change.position
                applied.append(change)
            self._position = max(self._position, next_position)
            self._fresh(started)
        for change in applied:
            self._notify(change)

    def _fresh(self, started: float) -> None:
        self._fresh_at = max(self._fresh_at, started)
        self.last_error = None
        self._changed.notify_all()

    def _notify(self, change: Change) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(change)
        except Exception:  # the app's callback must not stop the replica
            log.exception("replica: on_change failed for position %d", change.position)

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            log.warning("replica: %s", reason)
        self.last_error = reason

    # -- resuming across processes -------------------------------------------------------

    def _resume(self) -> None:
        """Start from a saved map and position, when a state file holds one."""
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
            self._features = {u: frozenset(f) for u, f in saved["features"].items()}
            self._default = frozenset(saved["default_features"])
            self._position = int(saved["position"])
            self._loaded = True
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("replica: ignoring state file %s: %s", self.state_file, e)

    def _save(self) -> None:
        if self.state_file is None or not self._loaded:
            return
        with self._changed:
            saved = {
                "position": self._position,
                "default_features": sorted(self._default),
                "features": {u: sorted(f) for u, f in self._features.items()},
            }
        partial = self.state_file.with_suffix(self.state_file.suffix + ".partial")
        partial.write_text(json.dumps(saved), encoding="utf-8")
        partial.replace(self.state_file)
