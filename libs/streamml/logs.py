"""Structured logging, configured once in each program's ``main()``.

``fmt="kv"`` (default) prints ``ts=... level=... logger=... msg="..."`` lines; ``fmt="json"``
prints one JSON object per line for log shippers. Secrets never reach a log line: settings
hold them as ``SecretStr``.

The values of a line are fields, not words of its message, so JSON logs stay queryable
(``partition == 3``) and one event is one ``msg``: pass them with :func:`fields`::

    log.info("dead letter", extra=fields(topic=topic, partition=p, offset=o, reason=r))

prints ``... msg="dead letter" topic=events partition=3 offset=17 reason=Decode`` in kv
and ``{..., "msg": "dead letter", "topic": "events", "partition": 3, ...}`` in JSON.

librdkafka's own log lines (a broker it cannot reach, a failed SASL handshake) come through
:func:`librdkafka_logger`, which every confluent-kafka client gets as its ``logger``: they
are structured like the rest, and a line that repeats (librdkafka retries a dead broker
several times a second) is printed once per interval with the count it held back.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

LogFormat = Literal["kv", "json"]

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_FIELDS = "fields"
# The keys every line has: a field may not take their place.
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra`` of a log call whose ``values`` are fields of the line.

    Any name is allowed (``name``, ``filename``, ``module``: no clash with the attributes
    of a ``LogRecord``, unlike plain ``extra``) except the line's own keys.

    >>> fields(topic="events", partition=3)
    {'fields': {'topic': 'events', 'partition': 3}}
    >>> fields(msg="x")
    Traceback (most recent call last):
    ...
    ValueError: log field 'msg' is one of the line's own keys (exc, level, logger, msg, ts)
    """
    for key in values:
        if key in _RESERVED:
            reserved = ", ".join(sorted(_RESERVED))
            raise ValueError(f"log field {key!r} is one of the line's own keys ({reserved})")
    return {_FIELDS: values}


class _Formatter(logging.Formatter):
    def __init__(self, fmt: LogFormat, service: str | None) -> None:
        super().__init__()
        self._fmt = fmt
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self._service:
            line["service"] = self._service
        line["msg"] = record.getMessage()
        passed = getattr(record, _FIELDS, None)
        if isinstance(passed, dict):
            line.update(passed)
        for key, value in vars(record).items():
            if key not in _STANDARD and key != _FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if self._fmt == "json":
            return json.dumps(line, default=str)
        return " ".join(f"{key}={_kv(value)}" for key, value in line.items())


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
    for noisy in ("aiokafka", "kafka", "urllib3", "asyncio", "httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


LIBRDKAFKA_LOGGER = "streamml.librdkafka"
LIBRDKAFKA_REPEAT_INTERVAL_S = 30.0
_DIGITS = re.compile(r"\d+")
# librdkafka's own suffix: "(after 3ms in state CONNECT, 4 identical error(s) suppressed)"
_LIBRDKAFKA_SUFFIX = re.compile(r"\s*\(after [^()]*(\([^()]*\)[^()]*)*\)\s*$")


class RepeatFilter(logging.Filter):
    """Let one record per distinct message through per ``interval_s``; count the rest.

    Messages that differ only in numbers (timings, counters, ports of the same broker) or
    in librdkafka's "(after ...ms in state ..., N identical error(s) suppressed)" suffix are
    the same message. The record that ends a quiet spell carries ``repeated=<count>``.
    """

    def __init__(self, interval_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _DIGITS.sub("#", _LIBRDKAFKA_SUFFIX.sub("", record.getMessage()))
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:  # bounded: forget the oldest half
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
        if held:
            record.repeated = held
        return True


class _LibrdkafkaFields(logging.Filter):
    """Turns librdkafka's ``(fac, client name, text)`` arguments into fields of the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka calls logger.log(level, "%s [%s] %s", fac, client name, text).
        args = record.args
        if record.msg == "%s [%s] %s" and isinstance(args, tuple) and len(args) == 3:
            record.facility, record.client = args[0], args[1]
            record.msg, record.args = str(args[2]), ()
        if record.levelno > logging.WARNING:
            # librdkafka says ERR for every refused connection of a broker blip, which the
            # client rides out; the runtime decides what is an error (its own line when it
            # gives up or fails fast), so an alert on level=error is not paged per blip.
            record.rdkafka_severity = record.levelname.lower()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def librdkafka_logger() -> logging.Logger:
    """The logger every confluent-kafka client gets as its ``logger`` setting."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    with _LOGGER_LOCK:
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(_LibrdkafkaFields())
            logger.addFilter(RepeatFilter(LIBRDKAFKA_REPEAT_INTERVAL_S))
    return logger


_LOGGER_LOCK = threading.Lock()
