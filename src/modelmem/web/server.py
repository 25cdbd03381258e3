"""The page's HTTP server: the standard library's ThreadingHTTPServer, one HTML page, a small JSON API.

  GET  /                      the page (form rendered here; the script reads the job from the URL)
  GET  /api/models?q=TEXT     catalog search
  GET  /api/estimate?model=…  one job's result (the page's own query string)
  GET  /api/curves?model=…    per-GPU memory against sequence length and batch size (asked after the result)
  POST /api/upload?name=FILE  a config.json or the first bytes of a GGUF (capped) → an upload:<digest> model name
Errors are JSON {"error": "<one line>"}: status 400 for modelmem's own errors, 500 (the type, no traceback) else.
"""

from __future__ import annotations

import html
import json
import sys
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from modelmem.errors import ModelmemError
from modelmem.web import api
from modelmem.web.form import render_fields


def _page() -> bytes:
    from modelmem import __version__
    from modelmem.catalog.gpus import gpus

    template = resources.files("modelmem.web").joinpath("page.html").read_text(encoding="utf-8")
    return (template.replace("{{FIELDS}}", render_fields(gpus()))
            .replace("{{VERSION}}", html.escape(__version__))).encode("utf-8")


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class Handler(BaseHTTPRequestHandler):
    server_version = "modelmem"
    page: bytes = b""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _answer(self, fn: Callable[[], Any]) -> None:
        try:
            self._json(200, fn())
        except ModelmemError as e:
            self._json(400, {"error": _one_line(e)})
        except Exception as e:  # a bug: the page gets one line, the server's stderr the traceback
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error ({type(e).__name__}): {_one_line(e)}"})

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/", "/index.html"):
            self._send(200, self.page, "text/html; charset=utf-8")
        elif url.path == "/api/models":
            self._answer(lambda: api.search_models(params.get("q", "")))
        elif url.path == "/api/estimate":
            self._answer(lambda: api.compute(params))
        elif url.path == "/api/curves":
            self._answer(lambda: api.curves(params))
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._json(404, {"error": f"no such page: {url.path}"})

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/api/upload":
            self._json(404, {"error": f"no such endpoint: {url.path}"})
            return
        params = dict(parse_qsl(url.query))
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= api.MAX_UPLOAD_GGUF_BYTES:
            self.close_connection = True
            self._json(413 if length > 0 else 400, {"error": f"model: an upload of 1 to {api.MAX_UPLOAD_GGUF_BYTES} bytes "
                                                             "(a config.json, or a GGUF's header)"})
            return
        data = self.rfile.read(length)
        self._answer(lambda: api.upload(params.get("name", "upload"), data))


def make_server(host: str = "127.0.0.1", port: int = 7860) -> ThreadingHTTPServer:
    """A server bound to host:port (port 0: a free one; read it from `server.server_address`)."""
    handler = type("PageHandler", (Handler,), {"page": _page()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(host: str = "127.0.0.1", port: int = 7860, announce: Callable[[str], Any] | None = None) -> None:
    """Serve until interrupted."""
    server = make_server(host, port)
    bound_host, bound_port = server.server_address[:2]
    if announce is not None:
        announce(f"http://{bound_host}:{bound_port}/")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
