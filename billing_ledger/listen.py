"""Where the service listens: the host `serve` binds, handed to each worker process.

The demo sign-in lets anyone claim any user, so it may serve only on a loopback listener.
That is decided from the host the sockets are bound to, never from LEDGER_APP_URL (which
only says what URL to hand Stripe): a server bound to 0.0.0.0 is reachable from the network
even when it is reached through 127.0.0.1.
"""

from __future__ import annotations

import ipaddress


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
