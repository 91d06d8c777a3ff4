"""FastAPI dependency.

::

    from fastapi import Depends, FastAPI
    from tokenwatch import VerifiedToken
    from tokenwatch.fastapi import TokenwatchBearer

    app = FastAPI()
    tw = TokenwatchBearer(url="http://localhost:8080", ingest_key=os.environ["TOKENWATCH_INGEST_KEY"])
    tw.install(app)  # optional: refusals as {"error": ..., "error_description": ...} bodies

    @app.get("/api/orders")
    def orders(token: VerifiedToken = Depends(tw.require(scopes=["orders:read"]))):
        return {"user": token.username}

The dependency is a plain function, so FastAPI runs it in its thread pool: a
JWKS fetch never blocks the event loop. It also declares the bearer scheme in
the OpenAPI document.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .guard import Guard, Refusal, RequestInfo
from .verifier import VerifiedToken


class TokenwatchRefusal(HTTPException):
    """A refused request: the status and ``WWW-Authenticate`` of RFC 6750."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(status_code=refusal.status, detail=refusal.body, headers=refusal.headers)
        self.refusal = refusal


class TokenwatchBearer:
    """Builds dependencies that protect routes with tokenwatch tokens."""

    def __init__(self, guard: Optional[Guard] = None, **options: Any) -> None:
        self.guard = guard or Guard(**options)
        # Only for the OpenAPI document ("Authorize" in /docs); the guard reads the headers itself.
        self._scheme = HTTPBearer(auto_error=False, scheme_name="tokenwatch")

    def install(self, app: FastAPI) -> None:
        """Answers refusals with the OAuth error body itself rather than under ``detail``."""

        async def handler(_: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, TokenwatchRefusal)
            return JSONResponse(exc.refusal.body, status_code=exc.refusal.status, headers=exc.refusal.headers)

        app.add_exception_handler(TokenwatchRefusal, handler)

    def require(self, scopes: Sequence[str] = (), roles: Sequence[str] = ()) -> Callable[..., VerifiedToken]:
        """A dependency returning the verified token, or raising :class:`TokenwatchRefusal`."""
        guard, scheme = self.guard, self._scheme

        def dependency(
            request: Request, _: Optional[HTTPAuthorizationCredentials] = Depends(scheme)
        ) -> VerifiedToken:
            info = RequestInfo(
                authorization=request.headers.getlist("authorization"),
                method=request.method,
                path=request.url.path,
                client_ip=request.client.host if request.client else None,
                user_agent=request.headers.get("user-agent"),
            )
            outcome = guard.check(info, scopes, roles)
            if isinstance(outcome, Refusal):
                raise TokenwatchRefusal(outcome)
            request.state.tokenwatch_token = outcome
            return outcome

        return dependency
