"""Error bodies: `{"error": CODE, "message": TEXT}` with a stable CODE."""

from __future__ import annotations

from starlette.responses import JSONResponse


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error response in the contract's shape."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
