"""How every process logs: one format with a timestamp, the ledger's lines at INFO.

`serve --workers N` runs each worker in a fresh interpreter that configures logging from
uvicorn's `log_config` alone, so the same dictionary is handed to uvicorn (every worker
applies it) and applied by the command line itself.
"""

from __future__ import annotations

import logging
import logging.config
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: everything to stderr, timestamped."""
    return {
        "version": 1,
        # Modules made their loggers at import, before any worker configures logging.
        "disable_existing_loggers": False,
        "formatters": {"default": {"format": FORMAT}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": level},
        # uvicorn's own loggers keep no handlers of their own: they use the root's format.
        "loggers": {
            name: {"handlers": [], "level": level, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(level: str = "INFO") -> None:
    """Apply `log_config` to this process, unless logging is configured already (a test
    runner, an app embedding the commands), as `logging.basicConfig` does: replacing the
    handlers would leave lines going to a stream its owner has closed."""
    if logging.getLogger().handlers:
        return
    logging.config.dictConfig(log_config(level))
