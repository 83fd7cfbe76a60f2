from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from booking_site.accounts.api.serializers import UserOut, UserRegisterIn, UserWithTokenOut
from booking_site.accounts.services import EmailTaken, user_register
from booking_site.schema import errors
from booking_site.throttling import REGISTRATION


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
