"""Structured logging, configured once in each program's ``main()``.

``fmt="kv"`` (default) prints ``ts=... level=... logger=... msg="..."`` lines; ``fmt="json"``
prints one JSON object per line for log shippers. Secrets never reach a log line: settings
hold them as ``SecretStr``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

LogFormat = Literal["kv", "json"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, fmt: LogFormat, service: str | None) -> None:
        super().__init__()
        self._fmt = fmt
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._service:
            fields["service"] = self._service
        fields["msg"] = record.getMessage()
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self._fmt == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{key}={_kv(value)}" for key, value in fields.items())


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def configure_logging(
    level: str = "INFO", fmt: LogFormat = "kv", *, service: str | None = None
) -> None:
    """Send all logs to stderr in one structured format; quiet noisy libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
