from django.urls import reverse
from django.utils import timezone
from django.utils.cache import get_conditional_response
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFound
from web import ical
from web.accounts.api.serializers import CalendarFeedOut, UserOut, UserRegisterIn, UserWithTokenOut
from web.accounts.services import (
    EmailTaken,
    calendar_feed_issue,
    calendar_feed_owner,
    calendar_feed_revoke,
    request_user,
    user_register,
)
from web.idempotency import idempotent
from web.schema import errors
from web.throttling import REGISTRATION


class UserRegister(APIView):
    """Register a user; the response carries the API token (``Authorization: Token <token>``)."""

    permission_classes = [AllowAny]
    throttle_scope = REGISTRATION  # per IP address: no account farms (docs/contract.md §3.6)

    @extend_schema(request=UserRegisterIn, responses={201: UserWithTokenOut, **errors(EmailTaken)})
    def post(self, request):
        data = UserRegisterIn.validated(request)
        user, _token = user_register(
            email=data["email"], name=data["name"], roles=data["roles"], password=data.get("password")
        )
        return Response(UserWithTokenOut(user).data, status=201)


class UserMe(APIView):
    @extend_schema(responses={200: UserOut})
    def get(self, request):
        return Response(UserOut(request.user).data)


class MyCalendarFeed(APIView):
    """The caller's private calendar feed (docs/contract.md §3.8): POST makes a new secret URL (the old one
    stops working at once), DELETE turns the feed off."""

    @extend_schema(request=None, responses={201: CalendarFeedOut})
    @idempotent
    def post(self, request):
        secret = calendar_feed_issue(user=request_user(request), now=timezone.now())
        url = request.build_absolute_uri(reverse("calendar-feed-document", kwargs={"secret": secret}))
        return Response(CalendarFeedOut({"url": url}).data, status=201)

    @extend_schema(request=None, responses={204: None})
    @idempotent
    def delete(self, request):
        calendar_feed_revoke(user=request_user(request))
        return Response(status=204)


class CalendarFeedDocument(ical.CalendarView):
    """A user's bookings as a calendar a calendar app subscribes to: the secret in the path is the only
    credential. Confirmed and recently cancelled bookings (``CALENDAR_FEED_PAST_DAYS`` back), as a guest
    and as a host, at most a year ahead. ``ETag``: an unchanged feed answers ``If-None-Match`` with 304."""

    authentication_classes: list = []  # the secret is the credential; an app sends no headers
    permission_classes = [AllowAny]

    @extend_schema(responses={**ical.CALENDAR_RESPONSE, 304: OpenApiResponse(description="Not modified")})
    def get(self, request, secret: str):
        user = calendar_feed_owner(secret)
        if user is None:
            raise NotFound("No such calendar feed (it may have been replaced or turned off).")
        body = ical.document(ical.feed_entries(user, now=timezone.now()), name=f"Bookings of {user}")
        tag = ical.etag(body)
        not_modified = get_conditional_response(request._request, etag=tag)
        if not_modified is not None:
            not_modified["ETag"] = tag
            return not_modified
        response = ical.calendar_response(body, filename="bookings.ics")
        response["ETag"] = tag
        response["Cache-Control"] = "private, no-cache"  # keep it, but ask again: bookings change any time
        return response
