"""Log lines as logfmt `key=value` pairs: easy to grep, to parse, and to trust.

Event ids and types come from request bodies, so a value that is not plainly safe is
quoted as an ASCII JSON string: a newline or a quote in it cannot forge another line
or another field.
"""

from __future__ import annotations

import json
import re

PLAIN = re.compile(r"[A-Za-z0-9_.,:/@+\-]+")
MISSING = "-"  # a field the line always has but cannot know (no event id before parsing)


def value(raw: object) -> str:
    """One value as logfmt shows it."""
    if raw is None:
        return MISSING
    text = str(raw)
    return text if PLAIN.fullmatch(text) and text != MISSING else json.dumps(text)


def fields(**pairs: object) -> str:
    """`key=value` pairs in the order given."""
    return " ".join(f"{key}={value(raw)}" for key, raw in pairs.items())
