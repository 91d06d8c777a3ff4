"""Django middleware and view decorator.

``settings.py``::

    MIDDLEWARE = [..., "tokenwatch.django.TokenwatchMiddleware"]
    TOKENWATCH = {
        "URL": "http://localhost:8080",
        "INGEST_KEY": os.environ["TOKENWATCH_INGEST_KEY"],
        "FAIL_MODE": "open",          # or "closed"
        "PROTECT": ["/api/"],         # path prefixes that need a valid token
        # "ISSUER", "AUDIENCE", "CA_FILE" as for tokenwatch.Guard
    }

A view that needs more than a valid token::

    from tokenwatch.django import require_token

    @require_token(scopes=["orders:write"], roles=["admin"])
    def delete_order(request, order_id):
        ...request.tokenwatch.username...

The decorator protects its view with or without the middleware; the middleware
adds the ``PROTECT`` prefixes. ``request.tokenwatch`` is the verified token.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse

from .guard import Guard, Refusal, RequestInfo

_guard: Optional[Guard] = None
_guard_lock = threading.Lock()
_SETTING_KEYS = {"URL": "url", "ISSUER": "issuer", "AUDIENCE": "audience", "INGEST_KEY": "ingest_key",
                 "FAIL_MODE": "fail_mode", "CA_FILE": "ca_file", "REALM": "realm"}  # fmt: skip
_MARK = "_tokenwatch_requirements"


def _config() -> Dict[str, Any]:
    conf = getattr(settings, "TOKENWATCH", None)
    if not isinstance(conf, dict):
        raise ImproperlyConfigured("settings.TOKENWATCH must be a dict with at least URL")
    return conf


def get_guard() -> Guard:
    """The process's :class:`~tokenwatch.guard.Guard`, built from ``settings.TOKENWATCH`` once."""
    global _guard
    with _guard_lock:
        if _guard is None:
            conf = _config()
            unknown = set(conf) - set(_SETTING_KEYS) - {"PROTECT"}
            if unknown:
                raise ImproperlyConfigured(f"unknown TOKENWATCH settings: {', '.join(sorted(unknown))}")
            _guard = Guard(**{_SETTING_KEYS[k]: v for k, v in conf.items() if k in _SETTING_KEYS})
        return _guard


def reset_guard() -> None:
    """Forgets the guard (tests that change ``settings.TOKENWATCH``)."""
    global _guard
    with _guard_lock:
        _guard = None


def _protect(request: HttpRequest, scopes: Sequence[str], roles: Sequence[str]) -> Optional[HttpResponse]:
    auth = request.META.get("HTTP_AUTHORIZATION")
    info = RequestInfo(
        authorization=[auth] if auth is not None else [],
        method=request.method,
        path=request.path,
        client_ip=request.META.get("REMOTE_ADDR"),
        user_agent=request.META.get("HTTP_USER_AGENT"),
    )
    outcome = get_guard().check(info, scopes, roles)
    if isinstance(outcome, Refusal):
        return JsonResponse(outcome.body, status=outcome.status, headers=outcome.headers)
    request.tokenwatch = outcome  # type: ignore[attr-defined]
    return None


def require_token(scopes: Sequence[str] = (), roles: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Protects a view: a valid token with every scope in ``scopes`` and role in ``roles``."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            if getattr(request, "_tokenwatch_checked", None) != (tuple(scopes), tuple(roles)):
                refused = _protect(request, scopes, roles)
                if refused is not None:
                    return refused
            return view(request, *args, **kwargs)

        setattr(wrapper, _MARK, (tuple(scopes), tuple(roles)))
        return wrapper

    return decorator


class TokenwatchMiddleware:
    """Protects the ``PROTECT`` path prefixes and every view marked by :func:`require_token`."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.prefixes: Tuple[str, ...] = tuple(_config().get("PROTECT", ()))
        get_guard()  # a configuration error shows at start-up, not at the first request

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
    ) -> Optional[HttpResponse]:
        needs: Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]] = getattr(view, _MARK, None)
        if needs is None and request.path.startswith(self.prefixes) and self.prefixes:
            needs = ((), ())
        if needs is None:
            return None
        refused = _protect(request, *needs)
        request._tokenwatch_checked = needs  # type: ignore[attr-defined]
        return refused
