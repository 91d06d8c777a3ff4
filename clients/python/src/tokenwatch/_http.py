"""The few HTTP calls the package makes, on the standard library alone (no
extra dependency for a client that sends one request a second at most)."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

USER_AGENT = "tokenwatch-python/0.1"


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class TransportError(Exception):
    """The request did not get an HTTP answer (refused, timed out, TLS failure...)."""


def ssl_context(ca_file: Optional[str]) -> Optional[ssl.SSLContext]:
    """A context trusting ``ca_file`` (for a tokenwatch with a private CA), or the default."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


def request(
    method: str,
    url: str,
    *,
    body: Optional[bytes] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float,
    context: Optional[ssl.SSLContext] = None,
    max_body: int = 4 << 20,
) -> Response:
    """One request; any HTTP status is a :class:`Response`, anything else a
    :class:`TransportError`. At most ``max_body`` bytes of the answer are read."""
    if not url.startswith(("http://", "https://")):
        raise TransportError(f"not an http(s) URL: {url!r}")
    hdrs = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=body, headers=hdrs, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return Response(resp.status, dict(resp.headers.items()), resp.read(max_body))
    except urllib.error.HTTPError as e:
        try:
            data = e.read(max_body)
        except OSError:
            data = b""
        return Response(e.code, dict(e.headers.items()) if e.headers else {}, data)
    # URLError, timeouts, resets and TLS errors are OSErrors; a garbled answer an HTTPException.
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise TransportError(str(getattr(e, "reason", e)) or type(e).__name__) from e
