"""Verifying tokens: tokenwatch's own (a real server) and hand-made ones signed
by a JWKS the test serves, each refusal with tokenwatch's reason code."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from local_jwks import LocalIssuer, flip_s

from tokenwatch import ConfigurationError, InvalidToken, KeysUnavailable, Verifier
from tokenwatch_server import free_port


@pytest.fixture
def local() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer()
    issuer.add_es256("k1")
    yield issuer
    issuer.close()


def refused(verifier: Verifier, token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as e:
        verifier.verify(token)
    return e.value


def b64(obj: Dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_a_tokenwatch_token_verifies_with_its_claims(tw: Any) -> None:
    token = tw.alice(scope="orders:read orders:write")
    v = Verifier(tw.server.base, issuer=tw.server.issuer)
    t = v.verify(token)
    assert t.username == "alice"
    assert t.roles == ["user"]
    assert t.scopes == ["orders:read", "orders:write"]
    assert t.alg == "ES256"
    assert t.kid == jwt.get_unverified_header(token)["kid"]
    assert t.token_fp == hashlib.sha256(token.encode()).hexdigest()[:16]
    assert t.claims["iss"] == tw.server.issuer
    # Verified again from the cache: one JWKS fetch for both.
    v.verify(token)
    assert v.jwks.stats().fetches == 1


def test_tampered_and_forged_tokens_are_refused_with_tokenwatchs_reasons(tw: Any) -> None:
    token = tw.alice()
    v = Verifier(tw.server.base, issuer=tw.server.issuer)
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))

    e = refused(v, f"{head}.{b64(dict(claims, sub='mallory'))}.{sig}")
    assert (e.reason, e.subject, e.jti) == ("bad_signature", None, None)  # a forger names no one
    assert e.token_fp is not None and len(e.token_fp) == 16

    # The high-S twin of tokenwatch's signature verifies in bare PyJWT, not here nor at tokenwatch.
    twin = flip_s(token, want_high=True)
    assert refused(v, twin).reason == "bad_signature"
    assert status_at_tokenwatch(tw.server.url("/api/v1/me"), twin) == 401

    header = jwt.get_unverified_header(token)
    # Algorithm confusion: HS256 keyed with the public key's PEM, with the real kid
    # (made by hand: PyJWT itself refuses to sign with a public key as HMAC secret).
    pem = Verifier(tw.server.base, issuer=tw.server.issuer).jwks.get(header["kid"]).key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'kid': header['kid']})}.{payload}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    confused = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert refused(v, confused).reason == "alg_not_allowed"
    assert refused(v, f"{b64({'alg': 'none', 'kid': header['kid']})}.{payload}.").reason == "alg_not_allowed"
    assert refused(v, f"{b64({'alg': 'ES256', 'kid': 'no-such-key'})}.{payload}.{sig}").reason == "unknown_kid"
    assert refused(v, f"{b64({'alg': 'ES256'})}.{payload}.{sig}").reason == "unknown_kid"

    assert refused(Verifier(tw.server.base, issuer=tw.server.issuer, audience="billing-api"), token).reason == "audience_mismatch"
    e = refused(Verifier(tw.server.base, issuer="https://someone-else.example"), token)
    assert (e.reason, e.subject) == ("issuer_mismatch", claims["sub"])  # signed: it may name whom


def status_at_tokenwatch(url: str, token: str) -> int:
    """The HTTP status tokenwatch itself answers for a bearer token."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + token})) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


CASES = [
    # (what, how to make the token, expected reason)
    ("expired", lambda i: i.sign(exp=int(time.time()) - 60), "expired"),
    ("not yet valid", lambda i: i.sign(nbf=int(time.time()) + 600), "not_yet_valid"),
    ("issued in the future", lambda i: i.sign(iat=int(time.time()) + 600), "iat_in_future"),
    ("no jti", lambda i: i.sign(jti=None), "missing_claim"),
    ("no sub", lambda i: i.sign(sub=None), "missing_claim"),
    ("no aud", lambda i: i.sign(aud=None), "missing_claim"),
    ("no exp", lambda i: i.sign(exp=None), "missing_claim"),
    ("exp far beyond 9999", lambda i: i.sign(exp=1e300), "malformed"),
    ("exp not a number", lambda i: i.sign(exp="never"), "malformed"),
    ("crit header", lambda i: i.sign(headers={"crit": ["b64"], "b64": True}), "unsupported_crit"),
    ("typ not a JWT", lambda i: i.sign(headers={"typ": "dpop+jwt"}), "bad_typ"),
    ("duplicate claim", lambda i: i.sign_raw("k1", {}, '{"sub":"a","sub":"admin"}'), "malformed"),
    ("high-S signature", lambda i: flip_s(i.sign(), want_high=True), "bad_signature"),
    ("kid of an unpublished key", lambda i: i.sign("hidden"), "unknown_kid"),
    ("JWE", lambda i: f"{b64({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.a.b.c.d", "jwe_not_supported"),
    ("four parts", lambda i: i.sign() + ".x", "malformed"),
    ("two tokens", lambda i: i.sign() + " " + i.sign(), "malformed"),
    ("padding", lambda i: i.sign() + "=", "malformed"),
    ("not base64", lambda i: "a.b!.c", "malformed"),
    ("too large", lambda i: i.sign(pad="x" * 9000), "too_large"),
]


@pytest.mark.parametrize("what,make,reason", CASES, ids=[c[0] for c in CASES])
def test_refusals_carry_tokenwatchs_reason_codes(local: LocalIssuer, what: str, make: Any, reason: str) -> None:
    local.add_es256("hidden", publish=False)
    v = Verifier(local.base, issuer=local.issuer, leeway=5)
    assert v.verify(local.sign()).subject == "u-1"  # the same issuer's good token passes
    assert refused(v, make(local)).reason == reason


def test_typ_at_jwt_and_an_aud_list_are_accepted(local: LocalIssuer) -> None:
    v = Verifier(local.base, issuer=local.issuer)
    assert v.verify(local.sign(headers={"typ": "at+jwt"}, aud=["other", "tokenwatch-api"])).subject == "u-1"


def test_unknown_kids_refetch_at_most_once_per_interval(local: LocalIssuer) -> None:
    v = Verifier(local.base, issuer=local.issuer, min_refetch_interval=1.0)
    v.verify(local.sign())
    assert local.fetches == 1
    time.sleep(1.1)
    for i in range(50):
        forged = f"{b64({'alg': 'ES256', 'kid': f'made-up-{i}'})}.{local.sign().split('.', 1)[1]}"
        assert refused(v, forged).reason == "unknown_kid"
    assert local.fetches == 2, "50 made-up kids cost one fetch in the interval"


def test_jwk_algorithm_is_pinned_and_unusable_keys_are_ignored(local: LocalIssuer) -> None:
    # A JWKS entry that is not a public signature key is never used, whatever the token says.
    local.jwks_entries.append({"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 32).decode().rstrip("=")})
    local.add_es256("enc-key", use="enc")
    v = Verifier(local.base, issuer=local.issuer)
    hs = jwt.encode(local.claims(), b"s" * 32, algorithm="HS256", headers={"kid": "shared"})
    assert refused(v, hs).reason == "unknown_kid"
    assert refused(v, local.sign("enc-key")).reason == "unknown_kid"


def test_issuer_and_jwks_from_discovery(local: LocalIssuer) -> None:
    local.discovery = {"issuer": "https://issuer.example/tw", "jwks_uri": local.jwks_url}
    v = Verifier(local.base)
    assert v.verify(local.sign(iss="https://issuer.example/tw")).subject == "u-1"
    assert refused(v, local.sign()).reason == "issuer_mismatch"


def test_discovery_missing_unreachable_or_of_the_real_server(local: LocalIssuer, tw: Any) -> None:
    with pytest.raises(ConfigurationError, match="issuer="):
        Verifier(local.base).verify(local.sign())  # no discovery document: say what to set
    with pytest.raises(KeysUnavailable):
        Verifier(f"http://127.0.0.1:{free_port()}").verify(local.sign())
    # The real server: its discovery document, where it has one, names the issuer we configured.
    try:
        doc = json.load(urllib.request.urlopen(tw.server.url("/.well-known/openid-configuration")))
    except urllib.error.HTTPError as e:
        assert e.code == 404
        with pytest.raises(ConfigurationError):
            Verifier(tw.server.base).verify(tw.alice())
    else:
        assert doc["issuer"] == tw.server.issuer
        assert Verifier(tw.server.base).verify(tw.alice()).username == "alice"


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError):
        Verifier()
    with pytest.raises(ConfigurationError):
        Verifier("http://127.0.0.1:1", issuer="x", audience="")
