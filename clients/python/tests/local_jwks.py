"""A JWKS and discovery document served over real HTTP on 127.0.0.1 by the
test itself, with keys the test holds, so it can sign tokens tokenwatch would
never issue (duplicate claims, crit, a future iat...) and count fetches."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def flip_s(token: str, want_high: bool) -> str:
    """The same ES256 token with its signature's s in the low (or high) form."""
    from jwt.utils import base64url_decode, base64url_encode

    head, payload, sig = token.split(".")
    raw = base64url_decode(sig)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    if (s > P256_N // 2) != want_high:
        s = P256_N - s
    return f"{head}.{payload}." + base64url_encode(r + s.to_bytes(32, "big")).decode()


def low_s(token: str) -> str:
    return flip_s(token, want_high=False)


class LocalIssuer:
    def __init__(self) -> None:
        self.keys: Dict[str, Any] = {}
        self.jwks_entries: List[Dict[str, Any]] = []
        self.fetches = 0
        self.discovery: Optional[Dict[str, Any]] = None
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/.well-known/jwks.json":
                    issuer.fetches += 1
                    body = json.dumps({"keys": issuer.jwks_entries}).encode()
                elif self.path == "/.well-known/openid-configuration" and issuer.discovery is not None:
                    body = json.dumps(issuer.discovery).encode()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.issuer = self.base
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def jwks_url(self) -> str:
        return self.base + "/.well-known/jwks.json"

    def add_es256(self, kid: str, publish: bool = True, **jwk_extra: Any) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = key
        if publish:
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": "ES256", **jwk_extra})
            self.jwks_entries.append(jwk)

    def claims(self, **overrides: Any) -> Dict[str, Any]:
        now = int(time.time())
        c: Dict[str, Any] = {"iss": self.issuer, "aud": "tokenwatch-api", "sub": "u-1", "username": "ursula",
                             "iat": now, "nbf": now, "exp": now + 300, "jti": str(uuid.uuid4()),
                             "roles": ["user"], "scope": "orders:read"}  # fmt: skip
        c.update(overrides)
        return {k: v for k, v in c.items() if v is not None}

    def sign(self, kid: str = "k1", headers: Optional[Dict[str, Any]] = None, **overrides: Any) -> str:
        token = jwt.encode(self.claims(**overrides), self.keys[kid], algorithm="ES256", headers={"kid": kid, **(headers or {})})
        return low_s(token)

    def sign_raw(self, kid: str, header: Dict[str, Any], payload_json: str) -> str:
        """Signs an exact payload text (e.g. with a duplicate member)."""
        from jwt.utils import base64url_encode

        h = base64url_encode(json.dumps({"alg": "ES256", "kid": kid, **header}).encode())
        p = base64url_encode(payload_json.encode())
        alg = ECAlgorithm(ECAlgorithm.SHA256)
        sig = alg.sign(h + b"." + p, self.keys[kid])
        return low_s((h + b"." + p + b"." + base64url_encode(sig)).decode())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
