"""The Flask extension, the FastAPI dependency and the Django middleware, each
driven through its framework's own test client against a real tokenwatch:
the same routes, the same RFC 6750 answers, the same audit events."""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tokenwatch import Guard, Reporter, Verifier
from tokenwatch_server import free_port

Headers = List[Tuple[str, str]]
Answer = Tuple[int, Dict[str, str], Any]
FRAMEWORKS = ["flask", "fastapi", "django"]


def flask_client(guard: Guard) -> Callable[[str, str, Headers], Answer]:
    from flask import Flask

    from tokenwatch.flask import Tokenwatch

    app = Flask("orders")
    tw = Tokenwatch(app, guard=guard)

    @app.get("/api/orders")
    @tw.require
    def orders() -> Any:
        return {"user": tw.token.username}

    @app.post("/api/orders/new")
    @tw.require(scopes=["orders:write"])
    def new_order() -> Any:
        return {"created_by": tw.token.username}

    @app.get("/reports/admin")
    @tw.require(roles=["admin"])
    def admin() -> Any:
        return {"admin": tw.token.username}

    client = app.test_client()

    def call(method: str, path: str, headers: Headers) -> Answer:
        r = client.open(path, method=method, headers=headers)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_json(silent=True)

    return call


def fastapi_client(guard: Guard) -> Callable[[str, str, Headers], Answer]:
    from fastapi import Depends, FastAPI
    from fastapi.testclient import TestClient

    from tokenwatch import VerifiedToken
    from tokenwatch.fastapi import TokenwatchBearer

    app = FastAPI()
    tw = TokenwatchBearer(guard)
    tw.install(app)

    @app.get("/api/orders")
    def orders(token: VerifiedToken = Depends(tw.require())) -> Any:
        return {"user": token.username}

    @app.post("/api/orders/new")
    def new_order(token: VerifiedToken = Depends(tw.require(scopes=["orders:write"]))) -> Any:
        return {"created_by": token.username}

    @app.get("/reports/admin")
    async def admin(token: VerifiedToken = Depends(tw.require(roles=["admin"]))) -> Any:
        return {"admin": token.username}

    client = TestClient(app)

    def call(method: str, path: str, headers: Headers) -> Answer:
        r = client.request(method, path, headers=headers)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.json()

    return call


_django_ready = False


def django_client(guard: Guard) -> Callable[[str, str, Headers], Answer]:
    global _django_ready
    import django
    from django.conf import settings

    import tokenwatch.django as twd

    if not _django_ready:
        settings.configure(
            SECRET_KEY="tokenwatch-tests", ALLOWED_HOSTS=["testserver"], ROOT_URLCONF="django_urls",
            MIDDLEWARE=["tokenwatch.django.TokenwatchMiddleware"], INSTALLED_APPS=[], USE_TZ=True,
            TOKENWATCH={"URL": "http://127.0.0.1:9", "ISSUER": "replaced-per-test", "PROTECT": ["/api/"]},
        )  # fmt: skip
        django.setup()
        _django_ready = True
    twd._guard = guard  # the guard settings.TOKENWATCH would build, with this test's server
    from django.test import Client

    client = Client()

    def call(method: str, path: str, headers: Headers) -> Answer:
        meta: Dict[str, str] = {}
        for k, v in headers:  # repeated headers joined with ", ", as WSGI servers do
            key = "HTTP_" + k.upper().replace("-", "_")
            meta[key] = f"{meta[key]}, {v}" if key in meta else v
        r = client.generic(method, path, **meta)
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.json()

    return call


CLIENTS = {"flask": flask_client, "fastapi": fastapi_client, "django": django_client}


class Ctx:
    def __init__(self, tw: Any, framework: str, guard: Guard) -> None:
        self.tw, self.guard = tw, guard
        self.call = CLIENTS[framework](guard)
        self.ua = f"pytest-{framework}-{uuid.uuid4()}"  # tags this test's events

    def get(self, path: str, token: Optional[str] = None, method: str = "GET", extra: Headers = ()) -> Answer:  # type: ignore[assignment]
        headers = [("User-Agent", self.ua)] + list(extra)
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        return self.call(method, path, headers)

    def events(self, n: int) -> List[Dict[str, Any]]:
        assert self.guard.reporter is not None and self.guard.reporter.flush(30)
        return self.tw.server.wait_for_events(n, source="py-tests", user_agent=self.ua)


@pytest.fixture(params=FRAMEWORKS)
def ctx(request: pytest.FixtureRequest, tw: Any) -> Iterator[Ctx]:
    guard = Guard(tw.server.base, issuer=tw.server.issuer, ingest_key=tw.ingest_key)
    yield Ctx(tw, request.param, guard)
    assert guard.reporter is not None
    guard.reporter.close()


def test_valid_token_is_granted_and_recorded(ctx: Ctx) -> None:
    token = ctx.tw.alice(scope="orders:read")
    status, _, body = ctx.get("/api/orders", token)
    assert (status, body) == (200, {"user": "alice"})
    [ev] = ctx.events(1)
    assert (ev["kind"], ev["outcome"], ev["username"], ev["method"], ev["path"]) == (
        "access.granted", "success", "alice", "GET", "/api/orders")  # fmt: skip
    assert ev["jti"] and ev["subject"] and ev["kid"] and ev["alg"] == "ES256" and len(ev["token_fp"]) == 16


def test_refusals_are_rfc6750_and_recorded(ctx: Ctx) -> None:
    alice = ctx.tw.alice(scope="orders:read")
    status, h, body = ctx.get("/api/orders")
    assert status == 401 and h["www-authenticate"] == 'Bearer realm="tokenwatch"'  # no error without a token
    status, h, _ = ctx.get("/api/orders", extra=[("Authorization", "Basic YWxpY2U6c2VjcmV0")])
    assert status == 401 and "error=" not in h["www-authenticate"]

    tampered = alice[:-6] + ("AAAAAA" if not alice.endswith("AAAAAA") else "BBBBBB")
    status, h, body = ctx.get("/api/orders", tampered)
    assert status == 401
    assert h["www-authenticate"] == 'Bearer realm="tokenwatch", error="invalid_token", error_description="bad_signature"'
    assert body["error"] == "invalid_token"

    status, h, _ = ctx.get("/api/orders/new", alice, method="POST")
    assert status == 403
    assert 'error="insufficient_scope"' in h["www-authenticate"] and 'scope="orders:write"' in h["www-authenticate"]
    status, h, _ = ctx.get("/reports/admin", alice)
    assert status == 403 and 'error="insufficient_scope"' in h["www-authenticate"]

    bob = ctx.tw.bob(scope="orders:write")
    assert ctx.get("/reports/admin", bob)[:3:2] == (200, {"admin": "bob"})
    assert ctx.get("/api/orders/new", bob, method="POST")[:3:2] == (200, {"created_by": "bob"})

    evs = ctx.events(7)
    got = [(e["kind"], e["reason"], e["path"]) for e in evs]
    assert got == [
        ("access.denied", "missing_token", "/api/orders"),
        ("access.denied", "missing_token", "/api/orders"),
        ("access.denied", "bad_signature", "/api/orders"),
        ("access.denied", "insufficient_scope", "/api/orders/new"),
        ("access.denied", "insufficient_scope", "/reports/admin"),
        ("access.granted", None, "/reports/admin"),
        ("access.granted", None, "/api/orders/new"),
    ]
    bad = evs[2]
    assert bad["token_fp"] and bad["subject"] is None, "a forged token names no one"
    assert evs[3]["detail"] == {"missing_scopes": ["orders:write"], "missing_roles": []}
    assert evs[4]["username"] == "alice" and evs[4]["detail"]["missing_roles"] == ["admin"]
    for e in evs:  # never the token itself
        assert alice not in str(e) and tampered not in str(e)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_two_authorization_headers_are_a_bad_request(tw: Any, framework: str) -> None:
    guard = Guard(tw.server.base, issuer=tw.server.issuer)
    call = CLIENTS[framework](guard)
    token = tw.alice()
    status, h, _ = call("GET", "/api/orders", [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    assert status == 400 and 'error="invalid_request"' in h["www-authenticate"]


def test_django_protects_only_prefixes_and_decorated_views(tw: Any) -> None:
    call = django_client(Guard(tw.server.base, issuer=tw.server.issuer))
    assert call("GET", "/public", [])[0] == 200
    assert call("GET", "/api/orders", [])[0] == 401
    assert call("GET", "/reports/admin", [])[0] == 401


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_keys_at_all_is_503_not_500(framework: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    call = CLIENTS[framework](Guard(dead, issuer=dead))
    status, h, body = call("GET", "/api/orders", [("Authorization", "Bearer " + _some_token())])
    assert status == 503 and h["retry-after"] == "5" and body["error"] == "temporarily_unavailable"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fail_closed_reporting_answers_503_once_delivery_fails(tw: Any, framework: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reporter = Reporter(dead, "twk_x", fail_mode="closed", flush_interval=0.01, backoff_initial=0.05, backoff_max=0.1)
    verifier = Verifier(tw.server.base, issuer=tw.server.issuer)
    call = CLIENTS[framework](Guard(tw.server.base, verifier=verifier, reporter=reporter))
    auth = [("Authorization", "Bearer " + tw.alice())]
    assert call("GET", "/api/orders", auth)[0] == 200  # delivery not yet known to fail
    deadline = time.monotonic() + 10
    while reporter.stats().healthy and time.monotonic() < deadline:
        time.sleep(0.01)
    status, _, body = call("GET", "/api/orders", auth)
    assert status == 503 and body["error"] == "temporarily_unavailable"
    assert call("GET", "/api/orders", [])[0] == 503, "nor is a refusal made without its record"
    reporter.close(0.1)


def _some_token() -> str:
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "x", "iat": now, "exp": now + 60}, "k" * 32, algorithm="HS256", headers={"kid": "k1"})
