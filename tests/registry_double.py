"""A fault-injecting schema registry TEST DOUBLE (Confluent API subset), for the fault matrix.

It answers the two calls the codec makes - ``POST /subjects/<subject>/versions`` (register,
returns the id) and ``GET /schemas/ids/<id>`` (look up) - from memory, and can be told to
fail: ``unavailable`` answers 503, ``hang`` holds each request past the client's timeout,
``refuse`` answers 409 (incompatible schema) to registrations. It exists only to inject
those faults into the real services; the real registry (Apicurio) is tested elsewhere.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.kafkatest import free_port


class FaultyRegistry:
    """``mode`` is one of ok, unavailable, hang, refuse; switch it while services run."""

    def __init__(self, mode: str = "ok", hang_s: float = 15.0) -> None:
        self.mode = mode
        self.hang_s = hang_s
        self.requests: list[tuple[str, str, int]] = []
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
                    double._answer(self, "POST", lambda: double._register(body["schema"]))
                else:
                    self._send(404, {"error_code": 404, "message": "not found"})

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                    double._answer(self, "GET", lambda: double._lookup(int(parts[2])))
                else:
                    self._send(404, {"error_code": 404, "message": "not found"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultyRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: Any, method: str, ok: Any) -> None:
        mode = self.mode
        if mode == "hang":
            time.sleep(self.hang_s)
            mode = "unavailable"
        if mode == "unavailable":
            code, body = 503, {"error_code": 50301, "message": "injected: registry unavailable"}
        elif mode == "refuse" and method == "POST":
            code, body = 409, {"error_code": 409, "message": "injected: incompatible schema"}
        else:
            code, body = ok()
        self.requests.append((method, handler.path, code))
        handler._send(code, body)

    def _register(self, schema: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            schema_id = self._ids.setdefault(schema, len(self._ids) + 1)
            self._schemas[schema_id] = schema
        return 200, {"id": schema_id}

    def _lookup(self, schema_id: int) -> tuple[int, dict[str, Any]]:
        schema = self._schemas.get(schema_id)
        if schema is None:
            return 404, {"error_code": 40403, "message": f"schema {schema_id} not found"}
        return 200, {"schema": schema, "schemaType": "AVRO"}
