"""A test double that injects faults into a real component: a TCP proxy in front of it.

Put it between a service and the real schema registry (or any HTTP(S) server) and switch
faults on and off while the service runs:

- :meth:`FaultProxy.down` closes every open connection and refuses new ones (the registry
  "is down"); :meth:`FaultProxy.up` lets traffic through again;
- :meth:`FaultProxy.refuse_registrations` answers every ``POST .../versions`` (a schema
  registration) with HTTP 409 and a Confluent-style error body, as a registry does for an
  incompatible schema; every other request still reaches the real registry.

With ``tls`` (a :class:`~streamml.tls.LocalCA`) it terminates HTTPS with a certificate of
that CA and speaks HTTPS to the upstream, so clients keep their CA setting unchanged.

>>> proxy = FaultProxy.for_url(registry.url, tls=ca).start()   # doctest: +SKIP
>>> env["STREAMML_KAFKA_SCHEMA_REGISTRY_URL"] = proxy.url       # doctest: +SKIP
>>> proxy.down(); ...; proxy.up()                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import urllib.parse
from typing import Literal

from streamml.tls import LocalCA

Mode = Literal["pass", "down", "refuse_registrations"]
_CONFLICT = json.dumps(
    {
        "error_code": 409,
        "message": "Schema being registered is incompatible with an earlier schema "
        "(injected by the test's FaultProxy)",
    }
).encode()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; faults are switched with tiny verbs."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        path: str = "",
        tls: LocalCA | None = None,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.path = path
        self._mode: Mode = "pass"
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server_tls: ssl.SSLContext | None = None
        self._upstream_tls: ssl.SSLContext | None = None
        if tls is not None:
            cert = tls.issue("fault-proxy")
            self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._server_tls.load_cert_chain(cert.cert_path, cert.key_path)
            self._upstream_tls = ssl.create_default_context(cafile=str(tls.cert_path))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        #: requests answered with an injected fault, by kind (for the test's assertions)
        self.injected: dict[str, int] = {"refused_connection": 0, "conflict": 0}

    @classmethod
    def for_url(cls, url: str, *, tls: LocalCA | None = None) -> FaultProxy:
        """A proxy for the server of ``url``; :attr:`url` is the same URL through it."""
        parsed = urllib.parse.urlsplit(url)
        assert parsed.hostname is not None and parsed.port is not None
        return cls(parsed.hostname, parsed.port, path=parsed.path, tls=tls)

    @property
    def url(self) -> str:
        scheme = "https" if self._server_tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def mode(self) -> Mode:
        return self._mode

    # -- faults ---------------------------------------------------------------------

    def down(self) -> None:
        """Close every connection and refuse new ones until :meth:`up`."""
        with self._lock:
            self._mode = "down"
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def up(self) -> None:
        """Let every request through again."""
        with self._lock:
            self._mode = "pass"

    def refuse_registrations(self) -> None:
        """Answer schema registrations (``POST .../versions``) with HTTP 409."""
        with self._lock:
            self._mode = "refuse_registrations"

    # -- life -----------------------------------------------------------------------

    def start(self) -> FaultProxy:
        threading.Thread(target=self._accept, name="fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.down()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._mode == "down":
                self.injected["refused_connection"] += 1
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self._server_tls is not None:
                client = self._server_tls.wrap_socket(client, server_side=True)
            upstream: socket.socket = socket.create_connection(self.upstream, timeout=30)
            if self._upstream_tls is not None:
                upstream = self._upstream_tls.wrap_socket(
                    upstream, server_hostname=self.upstream[0]
                )
            # 30 s bounds the connect and the handshake only: a registry slower than that to
            # answer (its first request on a loaded machine) must not look like a dropped
            # connection to the client, whose own timeout decides.
            upstream.settimeout(None)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open |= {client, upstream}
        try:
            with contextlib.suppress(OSError, ValueError):
                self._requests(client, upstream)
        finally:
            with self._lock:
                self._open -= {client, upstream}
            _close(client)
            _close(upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """One HTTP/1.1 exchange at a time, in this one thread: the request from the
        client to the upstream, then the whole response back (clients do not pipeline).
        A thread per direction read and wrote one TLS socket at once, which an SSL object
        does not allow: a request then hung for good (CI, 2026-12-05)."""
        buffer = b""
        while True:
            head, body, buffer = _read_message(client, buffer)
            if head is None:
                return
            method, target = [*head.split(b" ", 2), b"", b""][:2]
            if (
                self._mode == "refuse_registrations"
                and method == b"POST"
                and target.split(b"?")[0].endswith(b"/versions")
            ):
                self.injected["conflict"] += 1
                client.sendall(
                    b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(_CONFLICT)}\r\n\r\n".encode()
                    + _CONFLICT
                )
                continue
            upstream.sendall(head + b"\r\n\r\n" + body)
            if not _relay_response(upstream, client, method):
                return


def _headers(head: bytes) -> dict[bytes, bytes]:
    fields: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return fields


def _read_head(sock: socket.socket, buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head, what follows it) of the next message on ``sock``; None when the peer closed."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def _read_message(sock: socket.socket, buffer: bytes) -> tuple[bytes | None, bytes, bytes]:
    """(head, body, what is left) of the next request on ``sock`` (Content-Length
    bodies: what registry clients send); head None when the peer closed."""
    parts = _read_head(sock, buffer)
    if parts is None:
        return None, b"", b""
    head, rest = parts
    length = int(_headers(head).get(b"content-length", b"0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b"", b""
        rest += chunk
    return head, rest[:length], rest[length:]


def _chunked_end(data: bytes) -> int | None:
    """Where a chunked body that starts ``data`` ends, or None while incomplete."""
    at = 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(data[at:line_end].split(b";")[0].strip() or b"0", 16)
        at = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", at - 2)
            return None if trailer_end < 0 else trailer_end + 4
        if len(data) < at + size + 2:
            return None
        at += size + 2


def _relay_response(upstream: socket.socket, client: socket.socket, method: bytes) -> bool:
    """Copy one whole response from ``upstream`` to ``client``; whether the connection
    stays open."""
    parts = _read_head(upstream, b"")
    if parts is None:
        return False
    head, body = parts
    status = int(head.split(b" ", 2)[1])
    fields = _headers(head)
    keep = fields.get(b"connection", b"").lower() != b"close"
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        client.sendall(head + b"\r\n\r\n")
        return keep
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        while (end := _chunked_end(body)) is None:
            chunk = upstream.recv(65536)
            if not chunk:
                client.sendall(head + b"\r\n\r\n" + body)
                return False
            body += chunk
        client.sendall(head + b"\r\n\r\n" + body[:end])
        return keep
    if b"content-length" in fields:
        length = int(fields[b"content-length"])
        while len(body) < length:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            body += chunk
        client.sendall(head + b"\r\n\r\n" + body[:length])
        return keep
    while chunk := upstream.recv(65536):  # no length: the body ends with the connection
        body += chunk
    client.sendall(head + b"\r\n\r\n" + body)
    return False


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
