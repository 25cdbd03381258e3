"""modelmem's web page (`modelmem serve`, and app.py for a Hugging Face Space).

Standard library only: an http.server with one HTML page whose script draws what the server's JSON API returns.
Every number comes from the public API (estimate, compare, sweep); the page computes nothing itself.
"""

from __future__ import annotations

from modelmem.web.server import make_server, serve

__all__ = ["make_server", "serve"]
