"""A real HTTP server on 127.0.0.1 for the tests: `serve(handle)` runs `handle(request)` per
request in its own thread (http.server), where `request` is the BaseHTTPRequestHandler."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Request(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    handle_fn = None

    def log_message(self, *args):
        pass

    def send(self, code, body=b"", ctype="application/octet-stream", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, code, obj, headers=None):
        self.send(code, json.dumps(obj).encode(), "application/json", headers)

    def body_json(self):
        return json.loads(self.body or b"null")

    def _dispatch(self):
        # read the body first: an answer that ignores it must not leave it on a kept-alive
        # connection, where it would be parsed as the next request
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).handle_fn(self)

    do_GET = do_HEAD = do_POST = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up: not test failures
        pass


@contextmanager
def serve(handle):
    """Yield the base URL of a server answering with `handle(request)`."""
    handler = type("Handler", (Request,), {"handle_fn": staticmethod(handle)})
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
