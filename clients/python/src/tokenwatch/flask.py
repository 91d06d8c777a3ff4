"""Flask extension.

::

    from flask import Flask
    from tokenwatch.flask import Tokenwatch

    app = Flask(__name__)
    tw = Tokenwatch(app, url="http://localhost:8080", ingest_key=os.environ["TOKENWATCH_INGEST_KEY"])

    @app.get("/api/orders")
    @tw.require(scopes=["orders:read"])
    def orders():
        return {"user": tw.token.username}

Settings may also come from ``app.config``: ``TOKENWATCH_URL``,
``TOKENWATCH_ISSUER``, ``TOKENWATCH_AUDIENCE``, ``TOKENWATCH_INGEST_KEY``,
``TOKENWATCH_FAIL_MODE``, ``TOKENWATCH_CA_FILE`` (arguments win).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, TypeVar, cast, overload

from flask import Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from .guard import Guard, Refusal, RequestInfo
from .verifier import VerifiedToken

F = TypeVar("F", bound=Callable[..., Any])

_CONFIG_KEYS = {
    "url": "TOKENWATCH_URL", "issuer": "TOKENWATCH_ISSUER", "audience": "TOKENWATCH_AUDIENCE",
    "ingest_key": "TOKENWATCH_INGEST_KEY", "fail_mode": "TOKENWATCH_FAIL_MODE", "ca_file": "TOKENWATCH_CA_FILE",
}  # fmt: skip


def _request_info() -> RequestInfo:
    return RequestInfo(
        authorization=request.headers.getlist("Authorization"),
        method=request.method,
        path=request.path,
        client_ip=request.remote_addr,
        user_agent=request.user_agent.string or None,
    )


def refusal_response(refusal: Refusal) -> ResponseReturnValue:
    return jsonify(refusal.body), refusal.status, refusal.headers


def current_token() -> VerifiedToken:
    """The verified token of the current request (inside a protected view)."""
    token = g.get("tokenwatch_token")
    if token is None:
        raise RuntimeError("no verified token: the view is not protected by Tokenwatch.require")
    return cast(VerifiedToken, token)


class Tokenwatch:
    """The extension; ``init_app`` for the application-factory pattern."""

    def __init__(self, app: Optional[Flask] = None, *, guard: Optional[Guard] = None, **options: Any) -> None:
        self._guard = guard
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        guard = self._guard
        if guard is None:
            opts = {k: app.config[c] for k, c in _CONFIG_KEYS.items() if app.config.get(c) is not None}
            opts.update({k: v for k, v in self._options.items() if v is not None})
            guard = Guard(**opts)
        app.extensions["tokenwatch"] = guard

    @property
    def guard(self) -> Guard:
        if self._guard is not None:
            return self._guard
        return cast(Guard, current_app.extensions["tokenwatch"])

    @property
    def token(self) -> VerifiedToken:
        """The verified token of the current request."""
        return current_token()

    @overload
    def require(self, scopes: F) -> F: ...

    @overload
    def require(self, scopes: Sequence[str] = (), roles: Sequence[str] = ()) -> Callable[[F], F]: ...

    def require(self, scopes: Any = (), roles: Sequence[str] = ()) -> Any:
        """Protects a view (``@tw.require`` or ``@tw.require(scopes=[...], roles=[...])``):
        a valid token with every scope in ``scopes`` and every role in ``roles``;
        otherwise the RFC 6750 answer. Every decision is reported."""
        if callable(scopes):  # used bare: @tw.require
            return self.require()(scopes)

        def decorator(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                outcome = self.guard.check(_request_info(), scopes, roles)
                if isinstance(outcome, Refusal):
                    return refusal_response(outcome)
                g.tokenwatch_token = outcome
                return current_app.ensure_sync(view)(*args, **kwargs)

            return cast(F, wrapper)

        return decorator

    def login(self, username: str, password: str, scope: Optional[str] = None) -> ResponseReturnValue:
        """A login view's answer: the password grant at tokenwatch, passed through."""
        status, body = self.guard.login(
            username, password, scope=scope, client_ip=request.remote_addr,
            user_agent=request.user_agent.string or None,
        )  # fmt: skip
        headers = {"Cache-Control": "no-store"}  # RFC 6749 §5.1
        return jsonify(body), status, headers
