"""How every process logs: one format with a timestamp, the ledger's lines at INFO.

`serve --workers N` runs each worker in a fresh interpreter that configures logging from
uvicorn's `log_config` alone, so the same dictionary is handed to uvicorn (every worker
applies it) and applied by the command line itself.
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class LineFormatter(logging.Formatter):
    """The standard formatter, its timestamp's date and time formatted once a second: a
    webhook's line is written for every event, and strftime was a fifth of its cost."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """As the base class formats it (local time, then the milliseconds)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:  # a race between threads writes the same text twice
            self._stamp = time.strftime(self.default_time_format, self.converter(second))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"  # the base class's default_msec_format


def log_config(level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dictionary: everything to stderr, timestamped."""
    return {
        "version": 1,
        # Modules made their loggers at import, before any worker configures logging.
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": LineFormatter, "format": FORMAT}},
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
