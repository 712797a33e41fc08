"""Which app user ids the ledger links and reads back: one rule for both sides.

A user id is read at `/v1/users/{user_id}/...`, one path segment: a `/` (even sent as
`%2F`, which servers decode before routing) or a dot segment cannot sit in one, and the
reads take at most 255 characters. Links naming such an id could never be read, so the
projections ignore them and the reads refuse them with the same reason.
"""

from __future__ import annotations

MAX_LENGTH = 255
RULE = f'1 to {MAX_LENGTH} characters, without "/" or NUL, and not "." or ".."'


class InvalidUserIdError(ValueError):
    """A user id the ledger can never link or read back."""


def user_id_problem(value: str) -> str | None:
    """Why `value` can never be a readable user id, or None when it can."""
    if not 0 < len(value) <= MAX_LENGTH:
        return f"is {len(value)} characters long"
    if "/" in value:
        return 'contains "/"'
    if "\x00" in value:
        return "contains NUL"
    if value in (".", ".."):
        return "is a dot segment"
    return None


def linkable(value: str) -> bool:
    """Whether a link naming this user id is kept (it can be read back)."""
    return user_id_problem(value) is None


def checked_user_id(value: str) -> str:
    """`value`, or InvalidUserIdError with a reason a caller can show."""
    problem = user_id_problem(value)
    if problem is not None:
        raise InvalidUserIdError(
            f"user_id {problem}: a user id is {RULE}; such ids are never linked"
        )
    return value
