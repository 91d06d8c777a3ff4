"""tokenwatch's public keys (its JWKS), cached, refreshed and rotated.

* A key is used only for the algorithm its JWK names (``alg``, or the one its
  curve implies); the token header never chooses the algorithm (RFC 8725 §2.1).
  Symmetric (``oct``) keys and keys not meant for signatures are ignored.
* Keys are kept for ``max_age`` seconds, then refreshed in the background while
  the cached ones keep answering, so a request never waits for a routine refresh.
* A token naming a ``kid`` not in the cache triggers one fetch (tokenwatch has
  rotated its key), at most once per ``min_refetch_interval`` seconds whatever
  ``kid`` s an attacker makes up.
* When tokenwatch cannot be reached, cached keys keep verifying, however old.
  With no key at all, :class:`~tokenwatch.errors.KeysUnavailable` is raised
  (a 503, not a 401: the token may be fine).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional

import jwt

from . import _http
from .errors import KeysUnavailable

log = logging.getLogger("tokenwatch.jwks")

# Public-key algorithms a JWK may name, and the curve each EC/OKP one requires.
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
_ALLOWED = _RSA | set(_CURVES) | {"EdDSA"}


@dataclass(frozen=True)
class VerificationKey:
    """One usable key: its ``kid``, the one algorithm it verifies, and the key."""

    kid: str
    alg: str
    key: Any  # the public key object PyJWT verifies with


@dataclass(frozen=True)
class JwksStats:
    fetches: int
    fetch_failures: int
    keys: int
    last_error: Optional[str]
    age_seconds: Optional[float]


def pinned_alg(jwk: Mapping[str, Any]) -> Optional[str]:
    """The one algorithm ``jwk`` may verify, or ``None`` if it is not a usable
    public signature key. Never guessed for RSA (RS256 and PS256 share keys)."""
    kty, alg, crv = jwk.get("kty"), jwk.get("alg"), jwk.get("crv")
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and "verify" not in ops:
        return None
    if kty == "EC":
        implied = {v: k for k, v in _CURVES.items()}.get(crv) if isinstance(crv, str) else None
        return implied if implied and alg in (None, implied) else None
    if kty == "OKP":
        return "EdDSA" if crv in ("Ed25519", "Ed448") and alg in (None, "EdDSA") else None
    if kty == "RSA":
        return alg if alg in _RSA else None
    return None  # "oct" (a shared secret has no place in a public JWKS) and anything unknown


def parse_jwks(doc: Any) -> Dict[str, VerificationKey]:
    """The usable keys of a JWKS document, by ``kid``; unusable entries are skipped
    (and logged), a document that is not a JWKS is a ``ValueError``."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document (no `keys` array)")
    keys: Dict[str, VerificationKey] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            log.warning("JWKS entry without a string kid skipped")
            continue
        kid = jwk["kid"]
        alg = pinned_alg(jwk)
        if alg is None or alg not in _ALLOWED:
            log.warning("JWKS key %r skipped: not a public signature key with a known algorithm", kid)
            continue
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
            log.warning("JWKS key %r skipped: %s", kid, e)
            continue
        keys[kid] = VerificationKey(kid, alg, key)
    return keys


class JwksCache:
    """Thread-safe cache of one JWKS URL. ``get(kid)`` is what a verifier calls."""

    def __init__(
        self,
        jwks_url: str,
        *,
        max_age: float = 300.0,
        min_refetch_interval: float = 1.0,
        timeout: float = 3.0,
        ca_file: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.max_age = max_age
        self.min_refetch_interval = min_refetch_interval
        self.timeout = timeout
        self._context = _http.ssl_context(ca_file)
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._fetch_lock = threading.Lock()  # one fetch at a time
        self._keys: Dict[str, VerificationKey] = {}
        self._fetched_at: Optional[float] = None  # last successful fetch
        self._attempted_at: Optional[float] = None  # last attempt, successful or not
        self._last_ok = True
        self._last_error: Optional[str] = None
        self._fetches = 0
        self._failures = 0
        self._refreshing = False

    def get(self, kid: str) -> Optional[VerificationKey]:
        """The key named ``kid``; ``None`` when tokenwatch does not have it.

        Raises :class:`KeysUnavailable` when the answer cannot be known: no key
        could ever be fetched, or the ``kid`` is new and tokenwatch cannot be asked.
        """
        now = self._clock()
        with self._lock:
            key = self._keys.get(kid)
            stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
            if key is not None:
                if stale and self._may_fetch(now) and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._background_refresh, daemon=True).start()
                return key
        # An unknown kid: tokenwatch may have rotated its key. Ask (rate-limited).
        with self._fetch_lock:
            with self._lock:
                key = self._keys.get(kid)  # another thread may have fetched meanwhile
                if key is not None:
                    return key
                may = self._may_fetch(self._clock())
            if may:
                self._fetch()
            with self._lock:
                key = self._keys.get(kid)
                if key is None and not self._last_ok:
                    raise KeysUnavailable(
                        f"tokenwatch's keys could not be fetched from {self.jwks_url} "
                        f"({self._last_error}) and key {kid!r} is not cached"
                    )
                return key

    def refresh(self) -> bool:
        """Fetches the JWKS now (e.g. at start-up, to warm the cache); ``True`` on success."""
        with self._fetch_lock:
            return self._fetch()

    def stats(self) -> JwksStats:
        with self._lock:
            age = None if self._fetched_at is None else self._clock() - self._fetched_at
            return JwksStats(self._fetches, self._failures, len(self._keys), self._last_error, age)

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.min_refetch_interval

    def _background_refresh(self) -> None:
        try:
            with self._fetch_lock:
                self._fetch()
        finally:
            with self._lock:
                self._refreshing = False

    def _fetch(self) -> bool:
        """One fetch; the caller holds ``_fetch_lock``. Failures keep the old keys."""
        with self._lock:
            self._attempted_at = self._clock()
            self._fetches += 1
        try:
            resp = _http.request("GET", self.jwks_url, timeout=self.timeout, context=self._context, max_body=1 << 20)
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            keys = parse_jwks(resp.json())
        except (_http.TransportError, ValueError) as e:  # JSON errors are ValueErrors
            with self._lock:
                self._failures += 1
                self._last_ok = False
                self._last_error = str(e)
            log.warning("fetching tokenwatch's JWKS from %s failed (%s); cached keys stay in use", self.jwks_url, e)
            return False
        with self._lock:
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_ok = True
            self._last_error = None
        return True
