"""Where the service listens: the host `serve` binds, handed to each worker process.

The demo sign-in lets anyone claim any user, so it may serve only on a loopback listener.
That is decided from the host the sockets are bound to, never from LEDGER_APP_URL (which
only says what URL to hand Stripe): a server bound to 0.0.0.0 is reachable from the network
even when it is reached through 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

# Set by `serve` for the workers uvicorn starts; not a setting (an operator never sets it).
LISTEN_HOST_VARIABLE = "LEDGER_LISTEN_HOST"


def is_loopback(host: str | None) -> bool:
    """Whether a bound host is reachable from this machine only."""
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_host(env: Mapping[str, str] | None = None) -> str | None:
    """The host `serve` bound, or None when the app was started some other way."""
    env = os.environ if env is None else env
    return env.get(LISTEN_HOST_VARIABLE) or None
