"""The exceptions this package raises. Every one is a :class:`TokenwatchError`."""

from __future__ import annotations

from typing import Optional, Sequence


class TokenwatchError(Exception):
    """Base class of every exception raised by this package."""


class ConfigurationError(TokenwatchError):
    """The package is set up wrongly (a missing URL, issuer or audience); fix the settings."""


class InvalidToken(TokenwatchError):
    """The token is refused.

    ``reason`` is tokenwatch's own rejection code (``expired``, ``bad_signature``,
    ``unknown_kid``, ``alg_not_allowed``, ``issuer_mismatch``, ...), the same code
    tokenwatch records for the tokens it verifies itself, so both kinds of refusal
    read alike in the audit trail. The message never contains the token.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        token_fp: Optional[str] = None,
        kid: Optional[str] = None,
        alg: Optional[str] = None,
        subject: Optional[str] = None,
        jti: Optional[str] = None,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.token_fp = token_fp
        self.kid = kid
        self.alg = alg
        self.subject = subject
        self.jti = jti


class KeysUnavailable(TokenwatchError):
    """No key to check the token with could be had: tokenwatch's JWKS could not be
    fetched and nothing usable is cached. Answer 503 (try again later), never 401:
    the token may well be valid."""


class InsufficientScope(TokenwatchError):
    """The token is valid but lacks a required scope or role (RFC 6750 ``insufficient_scope``, 403)."""

    def __init__(self, missing_scopes: Sequence[str], missing_roles: Sequence[str]) -> None:
        parts = []
        if missing_scopes:
            parts.append("scope " + " ".join(missing_scopes))
        if missing_roles:
            parts.append("role " + " ".join(missing_roles))
        super().__init__("the token lacks " + " and ".join(parts))
        self.missing_scopes = list(missing_scopes)
        self.missing_roles = list(missing_roles)


class ReportingUnavailable(TokenwatchError):
    """A fail-closed reporter cannot take the event: its buffer is full, or
    tokenwatch's ingest API has failed since the last delivery that worked.
    Answer 503: a decision that cannot be recorded is not made."""
