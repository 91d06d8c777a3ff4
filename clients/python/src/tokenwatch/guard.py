"""The decision every framework integration makes, in one place: read the
bearer token, verify it, check scopes and roles, report ``access.granted`` or
``access.denied``, and say what to answer (RFC 6750).

==========================================  ======  ==================================================
situation                                   status  ``WWW-Authenticate``
==========================================  ======  ==================================================
no bearer token                             401     ``Bearer realm="..."`` (no error, RFC 6750 §3.1)
two Authorization headers                   400     ``error="invalid_request"``
token refused                               401     ``error="invalid_token", error_description="<reason>"``
scope or role missing                       403     ``error="insufficient_scope", scope="..."``
no key to check with (tokenwatch down,      503     (``Retry-After``)
nothing cached)
fail-closed reporting cannot record         503     (``Retry-After``)
==========================================  ======  ==================================================
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _http
from .errors import InsufficientScope, InvalidToken, KeysUnavailable, ReportingUnavailable
from .reporter import FAIL_OPEN, Reporter
from .verifier import VerifiedToken, Verifier

log = logging.getLogger("tokenwatch")

RETRY_AFTER_SECS = 5


@dataclass
class RequestInfo:
    """What the guard needs from a request, whatever the framework."""

    authorization: Sequence[str]  # every Authorization header value, in order
    method: Optional[str] = None
    path: Optional[str] = None
    client_ip: Optional[str] = None
    user_agent: Optional[str] = None


@dataclass
class Refusal:
    """An answer to send instead of running the route."""

    status: int
    body: Dict[str, str]
    headers: Dict[str, str] = field(default_factory=dict)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# WSGI servers join repeated headers with ", ": "Bearer a, Bearer b". A comma
# followed by an auth scheme and a space starts another credential (a token has no comma).
_JOINED = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*\s)")


def split_credentials(values: Sequence[str]) -> List[str]:
    """Every credential in the ``Authorization`` values, also when joined into one."""
    return [part for v in values for part in _JOINED.split(v)]


def bearer_token(values: Sequence[str]) -> Optional[str]:
    """The token of a single ``Authorization: Bearer`` value, else ``None``."""
    if len(values) != 1:
        return None
    scheme, _, rest = values[0].strip().partition(" ")
    token = rest.strip()
    return token if scheme.lower() == "bearer" and token else None


class Guard:
    """Protects routes; the Flask, FastAPI and Django integrations are thin
    adapters around :meth:`check`.

    ``url`` is tokenwatch's base URL. Tokens are verified locally (see
    :class:`~tokenwatch.verifier.Verifier` for ``issuer`` and ``audience``).
    With ``ingest_key`` (``tokenwatch sources add NAME``) every decision is
    reported in the background; ``fail_mode`` (``"open"`` or ``"closed"``) is
    the reporter's (see :mod:`tokenwatch.reporter`).
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        issuer: Optional[str] = None,
        audience: Union[str, Sequence[str]] = "tokenwatch-api",
        ingest_key: Optional[str] = None,
        fail_mode: str = FAIL_OPEN,
        realm: str = "tokenwatch",
        verifier: Optional[Verifier] = None,
        reporter: Optional[Reporter] = None,
        ca_file: Optional[str] = None,
        timeout: float = 3.0,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.verifier = verifier or Verifier(url, issuer=issuer, audience=audience, ca_file=ca_file, timeout=timeout)
        if reporter is None and ingest_key:
            if self.url is None:
                raise ValueError("reporting needs tokenwatch's url")
            reporter = Reporter(self.url, ingest_key, fail_mode=fail_mode, ca_file=ca_file)
        self.reporter = reporter
        self.realm = realm
        self._context = _http.ssl_context(ca_file)
        self._timeout = timeout

    def check(
        self, req: RequestInfo, scopes: Sequence[str] = (), roles: Sequence[str] = ()
    ) -> Union[VerifiedToken, Refusal]:
        """The verified token when the request may go on, else the :class:`Refusal` to send."""
        seen: Dict[str, Any] = dict(method=req.method, path=req.path, client_ip=req.client_ip, user_agent=req.user_agent)
        credentials = split_credentials(req.authorization)
        if len(credentials) > 1:
            return self._deny(seen, "duplicate_authorization", 400, "invalid_request", "duplicate_authorization")
        token = bearer_token(credentials)
        if token is None:
            return self._deny(seen, "missing_token", 401, None, "a bearer token is required")
        try:
            verified = self.verifier.verify(token)
        except InvalidToken as e:
            about = dict(token_fp=e.token_fp, kid=e.kid, alg=e.alg, subject=e.subject, jti=e.jti)
            return self._deny(dict(seen, **about), e.reason, 401, "invalid_token", e.reason)
        except KeysUnavailable as e:
            log.error("tokenwatch: cannot verify tokens: %s", e)
            self._report(dict(seen, kind="access.denied", outcome="failure", reason="keys_unavailable"))
            return self._unavailable("tokenwatch's keys cannot be fetched")
        seen.update(
            subject=verified.subject, username=verified.username, jti=verified.jti,
            kid=verified.kid, alg=verified.alg, token_fp=verified.token_fp,
        )  # fmt: skip
        try:
            verified.require(scopes, roles)
        except InsufficientScope as e:
            detail = {"missing_scopes": e.missing_scopes, "missing_roles": e.missing_roles}
            return self._deny(
                dict(seen, detail=detail), "insufficient_scope", 403, "insufficient_scope",
                str(e), scope=" ".join(scopes) or None,
            )  # fmt: skip
        try:
            self._report(dict(seen, kind="access.granted", outcome="success"), closed_raises=True)
        except ReportingUnavailable as e:
            return self._unavailable(str(e))
        return verified

    def _deny(
        self, seen: Dict[str, Any], reason: str, status: int, error: Optional[str], description: str,
        scope: Optional[str] = None,
    ) -> Refusal:  # fmt: skip
        try:
            self._report(dict(seen, kind="access.denied", outcome="failure", reason=reason), closed_raises=True)
        except ReportingUnavailable as e:
            return self._unavailable(str(e))
        challenge = f"Bearer realm={_quote(self.realm)}"
        body = {"error": error or "unauthorized", "error_description": description}
        if error:
            challenge += f", error={_quote(error)}, error_description={_quote(description)}"
        if scope:
            challenge += f", scope={_quote(scope)}"
        return Refusal(status, body, {"WWW-Authenticate": challenge})

    def _unavailable(self, why: str) -> Refusal:
        body = {"error": "temporarily_unavailable", "error_description": why}
        return Refusal(503, body, {"Retry-After": str(RETRY_AFTER_SECS)})

    def _report(self, event: Mapping[str, Any], closed_raises: bool = False) -> None:
        if self.reporter is None:
            return
        try:
            self.reporter.report(event)
        except ReportingUnavailable:
            if closed_raises:
                raise

    def login(
        self,
        username: str,
        password: str,
        *,
        scope: Optional[str] = None,
        client_ip: Optional[str] = None,
        user_agent: Optional[str] = None,
    ) -> Tuple[int, Dict[str, Any]]:
        """Exchanges a username and password at tokenwatch (``grant_type=password``);
        returns tokenwatch's status and JSON answer, for a login route to pass on.

        tokenwatch checks the password, applies its lockouts and records the attempt.
        The user's address is sent as ``X-Forwarded-For``: tokenwatch believes it only
        from an address in its ``trusted_proxies``, so list this application there.
        When tokenwatch cannot be reached the answer is 503 ``temporarily_unavailable``.
        """
        if self.url is None:
            raise ValueError("login needs tokenwatch's url")
        from urllib.parse import urlencode

        form = {"grant_type": "password", "username": username, "password": password}
        if scope:
            form["scope"] = scope
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if client_ip:
            headers["X-Forwarded-For"] = client_ip
        if user_agent:
            headers["User-Agent"] = user_agent
        try:
            resp = _http.request(
                "POST", f"{self.url}/oauth/token", body=urlencode(form).encode(), headers=headers,
                timeout=self._timeout, context=self._context,
            )  # fmt: skip
            return resp.status, resp.json()
        except (_http.TransportError, ValueError) as e:
            log.error("tokenwatch: login exchange failed: %s", e)
            return 503, {"error": "temporarily_unavailable", "error_description": "tokenwatch cannot be reached"}
