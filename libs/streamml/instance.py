"""The default instance id: the host name plus a slot that is unique among this host's processes.

The transactional id is ``<group>-<instance_id>``. With the host name alone, two
instances of one service on one host (a plain systemd unit started twice, a compose
scale-out with host networking) would share it and fence each other in turn. Each process
instead holds an exclusive lock on the lowest free slot file, ``slot-<n>.lock`` in
``STREAMML_SLOT_DIR`` (default: ``<tmp>/streamml-instance-slots``), for as long as it
lives. The kernel releases the lock when the process dies, even by SIGKILL, so an instance
restarted on the same host takes the same slot again: the same transactional id, which
fences its predecessor at once instead of waiting for its open transaction to time out.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import IO

_MAX_SLOTS = 1024
_held: tuple[str, IO[bytes]] | None = None


def slot_dir() -> Path:
    return Path(
        os.environ.get("STREAMML_SLOT_DIR")
        or Path(tempfile.gettempdir()) / "streamml-instance-slots"
    )


def default_instance_id() -> str:
    """``<host>-<slot>``; the same for every call in one process."""
    global _held  # noqa: PLW0603 (one slot per process, held for its life)
    if _held is not None:
        return _held[0]
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    directory = slot_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return f"{host}-{os.getpid()}"  # no shared directory: unique, not stable
    for slot in range(_MAX_SLOTS):
        handle = open(directory / f"slot-{slot}.lock", "ab")  # noqa: SIM115 (held for life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held = (f"{host}-{slot}", handle)
        return _held[0]
    return f"{host}-{os.getpid()}"
