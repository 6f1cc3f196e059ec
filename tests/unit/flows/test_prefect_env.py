"""flows.prefect_env: a temporary Prefect server gets its slow first requests from a
background thread as soon as it is up (`_warm_server`), not from the flow run."""

from __future__ import annotations

import http.server
import json
import socket
import threading

from flows.prefect_env import _warm_server


def test_warm_up_asks_the_server_and_its_database_once_each() -> None:
    seen: list[tuple[str, str, object]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            seen.append((method, self.path, body))
            payload = b"[]"
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _warm_server(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("GET", "/api/hello", None), ("POST", "/api/flows/filter", {"limit": 1})]


def test_warm_up_of_a_server_that_is_not_there_raises_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    _warm_server(port)
