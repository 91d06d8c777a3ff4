"""tokenwatch for Python services: verify tokenwatch tokens locally (PyJWT and
tokenwatch's JWKS), report the service's own decisions to tokenwatch's audit
trail in the background, and protect Flask, FastAPI and Django routes.

::

    from tokenwatch import Verifier, Reporter

    verifier = Verifier("http://localhost:8080")          # issuer from discovery, or issuer=...
    token = verifier.verify(raw_token)                     # VerifiedToken, or InvalidToken(reason)
    reporter = Reporter("http://localhost:8080", api_key)  # from `tokenwatch sources add NAME`
    reporter.report({"kind": "access.granted", "outcome": "success", "subject": token.subject})

Framework integrations: :mod:`tokenwatch.flask`, :mod:`tokenwatch.fastapi`,
:mod:`tokenwatch.django`.
"""

from .errors import (
    ConfigurationError,
    InsufficientScope,
    InvalidToken,
    KeysUnavailable,
    ReportingUnavailable,
    TokenwatchError,
)
from .guard import Guard, Refusal, RequestInfo
from .jwks import JwksCache
from .reporter import FAIL_CLOSED, FAIL_OPEN, Reporter, ReporterStats
from .verifier import VerifiedToken, Verifier, token_fingerprint

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "FAIL_CLOSED",
    "FAIL_OPEN",
    "Guard",
    "InsufficientScope",
    "InvalidToken",
    "JwksCache",
    "KeysUnavailable",
    "Refusal",
    "Reporter",
    "ReporterStats",
    "ReportingUnavailable",
    "RequestInfo",
    "TokenwatchError",
    "VerifiedToken",
    "Verifier",
    "token_fingerprint",
]
