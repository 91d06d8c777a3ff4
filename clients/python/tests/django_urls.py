"""The Django app of test_frameworks.py: /api/ is protected by the middleware's
PROTECT prefix; the other views by the decorator."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from tokenwatch.django import require_token


def orders(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"user": request.tokenwatch.username})  # type: ignore[attr-defined]


@require_token(scopes=["orders:write"])
def new_order(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"created_by": request.tokenwatch.username})  # type: ignore[attr-defined]


@require_token(roles=["admin"])
def admin(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"admin": request.tokenwatch.username})  # type: ignore[attr-defined]


def public(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"public": True})


urlpatterns = [
    path("api/orders", orders),
    path("api/orders/new", new_order),
    path("reports/admin", admin),
    path("public", public),
]
