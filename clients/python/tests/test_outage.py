"""A real tokenwatch stopped, its key rotated, started again: what the verifier,
the reporter and a protected Flask route do through it."""

from __future__ import annotations

import time
from typing import Any, Callable, Tuple

import jwt
import pytest
from flask import Flask

from tokenwatch import Guard, InvalidToken, KeysUnavailable, Reporter, Verifier
from tokenwatch.flask import Tokenwatch


def wait_until(what: str, probe: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def flask_app(guard: Guard, ua: str) -> Callable[[str], int]:
    app = Flask("outage")
    tw = Tokenwatch(app, guard=guard)

    @app.get("/api/orders")
    @tw.require
    def orders() -> Any:
        return {"user": tw.token.username}

    client = app.test_client()
    return lambda token: client.get("/api/orders", headers={"Authorization": f"Bearer {token}", "User-Agent": ua}).status_code


def test_rotated_key_is_fetched_on_its_first_token_and_old_tokens_keep_verifying(own_tw: Any) -> None:
    s = own_tw.server
    expiring = s.cli("token", "issue", "--sub", "svc-batch", "--ttl", "1").strip()
    s.start()
    old = own_tw.alice()
    v = Verifier(s.base, issuer=s.issuer)
    old_kid = v.verify(old).kid
    fetched_at = time.monotonic()
    assert v.jwks.stats().fetches == 1

    s.stop()
    s.cli("keys", "rotate")
    s.start()
    new = own_tw.alice()
    assert jwt.get_unverified_header(new)["kid"] != old_kid
    time.sleep(max(0.0, v.jwks.min_refetch_interval - (time.monotonic() - fetched_at)))
    assert v.verify(new).username == "alice"
    assert v.jwks.stats().fetches == 2, "one fetch, for the new kid"
    assert v.verify(old).kid == old_kid, "the retired key still verifies what it signed"
    assert v.jwks.stats().fetches == 2

    # A token tokenwatch issued that has since expired: refused as tokenwatch would.
    time.sleep(1.1)
    with pytest.raises(InvalidToken) as e:
        Verifier(s.base, issuer=s.issuer, leeway=0).verify(expiring)
    assert e.value.reason == "expired" and e.value.subject == "svc-batch"


def test_cached_keys_keep_verifying_while_tokenwatch_is_down(own_tw: Any) -> None:
    s = own_tw.server
    s.start()
    token = own_tw.alice()
    warm = Verifier(s.base, issuer=s.issuer, jwks_max_age=0.2)
    warm.verify(token)
    warm_app = flask_app(Guard(s.base, verifier=warm), "warm")
    assert warm_app(token) == 200
    s.stop()

    time.sleep(0.3)  # past max_age: a background refresh is tried, fails, the cache stays
    assert warm.verify(token).username == "alice"
    # Requests keep coming while tokenwatch is down; one of them triggers the
    # background refresh once the rate limit allows it.
    wait_until(
        "the failed refresh",
        lambda: warm.verify(token).username == "alice" and warm.jwks.stats().fetch_failures >= 1,
    )
    assert warm.verify(token).username == "alice"
    assert warm_app(token) == 200

    # A new kid cannot be looked up now: 503 (retry), not 401.
    with pytest.raises(KeysUnavailable):
        warm.verify(jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": "brand-new"}))

    cold = Verifier(s.base, issuer=s.issuer)
    with pytest.raises(KeysUnavailable):
        cold.verify(token)
    assert flask_app(Guard(s.base, verifier=cold), "cold")(token) == 503


def test_reporting_through_an_outage_fail_open_and_fail_closed(own_tw: Any) -> None:
    s = own_tw.server
    s.start()
    token = own_tw.alice()
    verifier = Verifier(s.base, issuer=s.issuer)
    quick = dict(flush_interval=0.01, backoff_initial=0.05, backoff_max=0.2)

    def app(mode: str, **opts: Any) -> Tuple[Callable[[str], int], Reporter]:
        reporter = Reporter(s.base, own_tw.ingest_key, fail_mode=mode, **quick, **opts)  # type: ignore[arg-type]
        return flask_app(Guard(s.base, verifier=verifier, reporter=reporter), f"fail-{mode}"), reporter

    open_app, open_r = app("open", max_buffer=5)
    closed_app, closed_r = app("closed")
    assert open_app(token) == 200 and closed_app(token) == 200
    assert open_r.flush(30) and closed_r.flush(30)
    s.stop()

    open_answers = [open_app(token) for _ in range(20)]
    assert open_answers == [200] * 20, "fail-open: the app keeps serving"
    assert closed_app(token) == 200  # its event is queued; the failure is not known yet
    wait_until("the closed reporter to see the failure", lambda: not closed_r.stats().healthy)
    assert [closed_app(token) for _ in range(5)] == [503] * 5, "fail-closed: no access without its record"
    wait_until("the open reporter to see the failure", lambda: not open_r.stats().healthy)
    o = open_r.stats()
    assert (o.queued, o.dropped_buffer_full) == (5, 15), o
    assert closed_r.stats().refused_closed == 5

    s.start()
    wait_until("both reporters to deliver again", lambda: open_r.stats().queued == 0 and closed_r.stats().healthy)
    assert closed_app(token) == 200
    assert closed_r.flush(30)
    o = open_r.stats()
    assert (o.sent, o.dropped) == (6, 15)
    assert len(s.wait_for_events(6, source="py-tests", user_agent="fail-open")) == 6
    closed_events = s.wait_for_events(3, source="py-tests", user_agent="fail-closed")
    assert [e["kind"] for e in closed_events] == ["access.granted"] * 3, "only the accesses that were allowed"
    open_r.close()
    closed_r.close()
