"""A client for apps: ask the ledger over HTTP, or keep every user's features in process.

Speaks HTTP only (httpx); Starlette is imported only by `requires_feature`'s endpoint gate.

```python
from billing_ledger.client import Replica
replica = Replica("http://127.0.0.1:8000", token="...")
replica.start(); replica.wait_ready(timeout=10)
replica.allowed("u_1", "pro")
```
"""

from __future__ import annotations

from billing_ledger.client.gate import (
    EXCEPTION_HANDLERS,
    FeatureDeniedError,
    FeatureGate,
    feature_denied,
    feature_required,
    requires_feature,
)
from billing_ledger.client.ledger import AsyncLedgerClient, LedgerClient, LedgerError
from billing_ledger.client.replica import Change, Replica

__all__ = [
    "EXCEPTION_HANDLERS",
    "AsyncLedgerClient",
    "Change",
    "FeatureDeniedError",
    "FeatureGate",
    "LedgerClient",
    "LedgerError",
    "Replica",
    "feature_denied",
    "feature_required",
    "requires_feature",
]
