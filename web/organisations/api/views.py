"""Organisations and their members (docs/contract.md §2.6): ``GET /api/organisations`` (the caller's),
``POST`` (superusers), and the members of one (its owners)."""

from django.db.models import CharField, OuterRef, Subquery
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework.generics import ListAPIView
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import NotFound
from core.organisations import access
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role
from web.accounts.services import request_user
from web.api import Operators, Superusers
from web.idempotency import idempotent
from web.organisations import services
from web.organisations.api.serializers import MemberIn, MemberOut, OrganisationIn, OrganisationOut
from web.schema import errors


class OrganisationList(ListAPIView):
    """The organisations the caller belongs to, with their role (a superuser: every one). A superuser
    makes one with POST."""

    serializer_class = OrganisationOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organisation.objects.none()
        user = request_user(self.request)
        role = Membership.objects.filter(organisation=OuterRef("pk"), user=user).values("role")[:1]
        caller_role = Subquery(role, output_field=CharField())
        organisations = Organisation.objects.annotate(caller_role=caller_role)  # type: ignore[no-redef]  # django-stubs: not a field
        if user.is_superuser:
            return organisations.order_by("id")
        return organisations.filter(memberships__user=user).order_by("id")

    def get_permissions(self):
        return [Superusers()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(request=OrganisationIn, responses={201: OrganisationOut, **errors(services.SlugTaken)})
    @idempotent
    def post(self, request):
        data = OrganisationIn.validated(request)
        organisation = services.organisation_create(name=data["name"], slug=data["slug"], now=timezone.now())
        organisation.caller_role = None  # a new organisation has no member yet
        return Response(OrganisationOut(organisation).data, status=201)


@extend_schema_view(get=extend_schema(responses={200: MemberOut, **errors(access.RoleRequired)}))
class MemberList(ListAPIView):
    """The members of an organisation and their roles (its owners only). POST adds a member by email, or
    changes a member's role (409 ``last_owner`` for demoting its last owner)."""

    serializer_class = MemberOut
    permission_classes = [Operators]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Membership.objects.none()
        organisation_id, user = self.kwargs["organisation_id"], request_user(self.request)
        access.require(user, organisation_id, Role.OWNER, what=f"Organisation {organisation_id}")
        if user.is_superuser and not Organisation.objects.filter(pk=organisation_id).exists():
            raise NotFound(f"Organisation {organisation_id} does not exist.")  # a member's exists: it is theirs
        return Membership.objects.filter(organisation_id=organisation_id).select_related("user").order_by("user_id")

    @extend_schema(
        request=MemberIn,
        responses={201: MemberOut, 200: MemberOut, **errors(access.RoleRequired, services.LastOwner)},
    )
    @idempotent
    def post(self, request, organisation_id: int):
        data = MemberIn.validated(request)
        membership, created = services.membership_set(
            organisation_id=organisation_id,
            email=data["email"],
            role=Role(data["role"]),
            actor=request_user(request),
            now=timezone.now(),
        )
        return Response(MemberOut(membership).data, status=201 if created else 200)


class MemberDetail(APIView):
    """DELETE removes a member (409 ``last_owner`` for its last owner)."""

    permission_classes = [Operators]

    @extend_schema(request=None, responses={204: None, **errors(access.RoleRequired, services.LastOwner)})
    @idempotent
    def delete(self, request, organisation_id: int, user_id: int):
        services.membership_remove(organisation_id=organisation_id, user_id=user_id, actor=request_user(request))
        return Response(status=204)
