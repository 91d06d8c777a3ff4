"""Verifying tokenwatch access tokens locally, with PyJWT and tokenwatch's JWKS.

Every refusal is an :class:`~tokenwatch.errors.InvalidToken` carrying the same
reason code tokenwatch itself records (``expired``, ``bad_signature``, ...).
Checks beyond PyJWT's, mirroring tokenwatch's own verifier: a length cap,
strict base64url, no duplicate JSON keys, ``crit`` refused, ``typ`` JWT or
at+jwt, ``iat`` not in the future, date claims within 0..=253402300799, ES256
signatures low-S, and ``exp``, ``iat``, ``iss``, ``aud``, ``sub``, ``jti``
required. The algorithm comes from the key the ``kid`` selects, never from
the header.

Local verification cannot see a revocation made at tokenwatch: a revoked access
token verifies here until it expires (``access_ttl_secs``, 15 minutes by default).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jwt

from . import _http
from .errors import ConfigurationError, InsufficientScope, InvalidToken, KeysUnavailable
from .jwks import JwksCache

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_DATE = 253402300799  # 9999-12-31T23:59:59Z
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")

# Most specific first: PyJWT's exceptions subclass each other.
_PYJWT_REASONS: List[Tuple[type, str]] = [
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "audience_mismatch"),
    (jwt.InvalidIssuerError, "issuer_mismatch"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    *[(getattr(jwt, n), "missing_claim") for n in ("InvalidSubjectError", "InvalidJTIError") if hasattr(jwt, n)],
    (jwt.InvalidAlgorithmError, "alg_not_allowed"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidTokenError, "malformed"),
]


def token_fingerprint(token: str) -> str:
    """tokenwatch's ``token_fp``: the first 16 hex digits of the token's SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _log_safe_id(raw: Any) -> Optional[str]:
    if raw is None:
        return None
    return raw if isinstance(raw, str) and _SAFE_ID.match(raw) else "<invalid>"


def _log_safe_text(raw: Any, limit: int = 256) -> Optional[str]:
    if not isinstance(raw, str):
        return None
    return "".join("?" if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in raw[:limit])


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check, with what a protected route needs."""

    claims: Mapping[str, Any]
    kid: str
    alg: str
    token_fp: str

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    @property
    def username(self) -> Optional[str]:
        u = self.claims.get("username")
        return u if isinstance(u, str) else None

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @property
    def roles(self) -> List[str]:
        r = self.claims.get("roles")
        return [x for x in r if isinstance(x, str)] if isinstance(r, list) else []

    @property
    def scopes(self) -> List[str]:
        """The space-separated ``scope`` claim as a list (RFC 6749 §3.3)."""
        s = self.claims.get("scope")
        return s.split() if isinstance(s, str) else []

    def require(self, scopes: Sequence[str] = (), roles: Sequence[str] = ()) -> None:
        """Raises :class:`InsufficientScope` unless the token has every scope and role named."""
        missing_scopes = [s for s in scopes if s not in self.scopes]
        missing_roles = [r for r in roles if r not in self.roles]
        if missing_scopes or missing_roles:
            raise InsufficientScope(missing_scopes, missing_roles)


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate JSON member")
    return dict(pairs)


def _json_object(segment: str, what: str) -> Dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment), object_pairs_hook=_no_duplicates)
    except (ValueError, binascii.Error, RecursionError) as e:
        raise ValueError(f"the {what} is not a JSON object ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"the {what} is not a JSON object")
    return value


def _typ_allowed(typ: Any) -> bool:
    if not isinstance(typ, str):
        return False
    t = typ.lower()
    t = t[len("application/") :] if t.startswith("application/") else t
    return t in ("jwt", "at+jwt")


@dataclass
class _Discovered:
    issuer: str
    jwks_url: str


class Verifier:
    """Verifies tokenwatch access tokens.

    ``url`` is tokenwatch's base URL (``http://localhost:8080``). The issuer to
    require is ``issuer`` when given, else the ``issuer`` of tokenwatch's
    discovery document (``/.well-known/openid-configuration``), read once on first
    use; keys come from that document's ``jwks_uri`` or ``{url}/.well-known/jwks.json``.
    ``audience`` is required in every token's ``aud`` (tokenwatch's default
    audience is ``tokenwatch-api``).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        issuer: Optional[str] = None,
        audience: Union[str, Sequence[str]] = "tokenwatch-api",
        jwks_url: Optional[str] = None,
        leeway: float = 5.0,
        max_token_bytes: int = 8192,
        jwks_max_age: float = 300.0,
        min_refetch_interval: float = 1.0,
        timeout: float = 3.0,
        ca_file: Optional[str] = None,
    ) -> None:
        if url is None and issuer is not None and issuer.startswith(("http://", "https://")):
            url = issuer
        if url is None and jwks_url is None:
            raise ConfigurationError("tokenwatch's URL is required (or an http(s) issuer, or jwks_url)")
        if not audience:
            raise ConfigurationError("an audience is required: tokens for other services must be refused")
        self.url = url.rstrip("/") if url else None
        self.audience = audience
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._jwks: Optional[JwksCache] = None
        self._jwks_options = dict(max_age=jwks_max_age, min_refetch_interval=min_refetch_interval, timeout=timeout, ca_file=ca_file)
        self._timeout = timeout
        self._context = _http.ssl_context(ca_file)
        self._setup_lock = threading.Lock()
        self._discovery_failed_at: Optional[float] = None
        self._min_refetch_interval = min_refetch_interval
        if issuer is not None:
            self._jwks = JwksCache(jwks_url or f"{self.url}/.well-known/jwks.json", **self._jwks_options)  # type: ignore[arg-type]

    @property
    def jwks(self) -> JwksCache:
        """The key cache (discovering tokenwatch first if needed)."""
        self._ensure_setup()
        assert self._jwks is not None
        return self._jwks

    @property
    def issuer(self) -> str:
        self._ensure_setup()
        assert self._issuer is not None
        return self._issuer

    def _ensure_setup(self) -> None:
        if self._jwks is not None:
            return
        with self._setup_lock:
            if self._jwks is not None:
                return
            now = time.monotonic()
            if self._discovery_failed_at is not None and now - self._discovery_failed_at < self._min_refetch_interval:
                raise KeysUnavailable("tokenwatch's discovery document could not be fetched recently; retrying soon")
            try:
                found = self._discover()
            except KeysUnavailable:
                self._discovery_failed_at = now
                raise
            self._issuer = found.issuer
            self._jwks = JwksCache(self._jwks_url or found.jwks_url, **self._jwks_options)  # type: ignore[arg-type]

    def _discover(self) -> _Discovered:
        where = f"{self.url}/.well-known/openid-configuration"
        try:
            resp = _http.request("GET", where, timeout=self._timeout, context=self._context)
        except _http.TransportError as e:
            raise KeysUnavailable(f"tokenwatch's discovery document {where} could not be fetched ({e})") from e
        if resp.status == 404:
            raise ConfigurationError(
                f"{where} does not exist (an older tokenwatch): pass issuer= (tokenwatch.toml's `issuer`)"
            )
        if resp.status != 200:
            raise KeysUnavailable(f"tokenwatch's discovery document {where} answered HTTP {resp.status}")
        try:
            doc = resp.json()
            issuer, jwks_uri = doc["issuer"], doc["jwks_uri"]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"{where} is not a discovery document with issuer and jwks_uri ({e})") from e
        if not isinstance(issuer, str) or not isinstance(jwks_uri, str) or not issuer:
            raise ConfigurationError(f"{where} has no string issuer and jwks_uri")
        return _Discovered(issuer, jwks_uri)

    def verify(self, token: str) -> VerifiedToken:
        """The verified token, or :class:`InvalidToken` with tokenwatch's reason code.

        Raises :class:`KeysUnavailable` when tokenwatch's keys cannot be had (503).
        """
        if not isinstance(token, str):
            raise InvalidToken("malformed", "the token is not text")
        if len(token.encode("utf-8", "surrogatepass")) > self.max_token_bytes:
            raise InvalidToken("too_large", f"the token is longer than {self.max_token_bytes} bytes")
        fp = token_fingerprint(token)

        def refuse(reason: str, message: str, **seen: Any) -> InvalidToken:
            return InvalidToken(reason, message, token_fp=fp, **seen)

        parts = token.split(".")
        if len(parts) == 5:
            try:
                if "enc" in _json_object(parts[0], "header"):
                    raise refuse("jwe_not_supported", "encrypted tokens (JWE) are not accepted")
            except ValueError:
                pass
        if len(parts) != 3 or not all(_B64URL.match(p) for p in parts):
            raise refuse("malformed", "not a compact JWS (three base64url parts)")
        try:
            header = _json_object(parts[0], "header")
            _json_object(parts[1], "payload")
        except ValueError as e:
            raise refuse("malformed", str(e)) from None

        kid, alg = header.get("kid"), header.get("alg")
        seen = dict(kid=_log_safe_id(kid), alg=_log_safe_id(alg))
        if not isinstance(alg, str) or alg.lower() == "none":
            raise refuse("alg_not_allowed", "the header's alg is missing or none", **seen)
        if "crit" in header:
            raise refuse("unsupported_crit", "the header has a crit entry; no extension is supported", **seen)
        if "typ" in header and not _typ_allowed(header["typ"]):
            raise refuse("bad_typ", "the header's typ is neither JWT nor at+jwt", **seen)
        if not isinstance(kid, str):
            raise refuse("unknown_kid", "the header has no string kid", **seen)
        key = self.jwks.get(kid)
        if key is None:
            raise refuse("unknown_kid", "tokenwatch has no key with this kid", **seen)
        if alg != key.alg:
            raise refuse("alg_not_allowed", f"key {kid} verifies {key.alg} only", **seen)
        if key.alg == "ES256" and not self._low_s(parts[2]):
            raise refuse("bad_signature", "an ES256 signature must be low-S", **seen)

        options = {"require": list(REQUIRED_CLAIMS), "verify_iat": False}
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.InvalidTokenError as e:
            reason = next(r for cls, r in _PYJWT_REASONS if isinstance(e, cls))
            signed = reason not in ("bad_signature", "alg_not_allowed", "malformed")
            extra = {}
            if signed:  # only a verified token may name whom its refusal is about
                payload = _json_object(parts[1], "payload")
                extra = dict(subject=_log_safe_text(payload.get("sub")), jti=_log_safe_text(payload.get("jti")))
            raise refuse(reason, str(e), **seen, **extra) from None

        after = dict(seen, subject=_log_safe_text(claims.get("sub")), jti=_log_safe_text(claims.get("jti")))
        for name in ("exp", "nbf", "iat"):
            v = claims.get(name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= _MAX_DATE):
                raise refuse("malformed", f"claim {name} is not a date", **after)
        if claims["iat"] > time.time() + self.leeway:
            raise refuse("iat_in_future", "the token claims to be issued in the future", **after)
        return VerifiedToken(claims=claims, kid=kid, alg=key.alg, token_fp=fp)

    @staticmethod
    def _low_s(signature: str) -> bool:
        try:
            sig = _b64decode(signature)
        except (ValueError, binascii.Error):
            return False
        return len(sig) == 64 and int.from_bytes(sig[32:], "big") <= _P256_ORDER // 2

