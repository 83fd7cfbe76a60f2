"""Every write to organisations and their members (docs/contract.md §2.6): an organisation is made by the
platform's operators (superusers); its owners add members, change their roles and remove them. An
organisation that has an owner keeps one: its last owner is neither removed nor demoted (``LastOwner``).
A write to the members takes the organisation's row lock first (``core.locking``'s order, 0), so two such
writes in one organisation take turns and each reads the owners the other left."""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models.functions import Lower

from core import locking
from core.errors import Conflict, NotFound, ValidationFailed
from core.organisations import access
from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role
from web.accounts.models import User


class SlugTaken(Conflict):
    code = "slug_taken"

    def __init__(self, slug: str):
        super().__init__(f"An organisation's slug is already {slug!r}.", details={"slug": slug})


class LastOwner(Conflict):
    code = "last_owner"

    def __init__(self, *, organisation_id: int, user_id: int):
        super().__init__(
            f"User {user_id} is the last owner of organisation {organisation_id}: make another member owner first.",
            details={"organisationId": organisation_id, "userId": user_id},
        )


def organisation_create(*, name: str, slug: str, now: datetime) -> Organisation:
    """A new organisation, with no member yet (its first owner is added by a superuser: ``membership_set``).
    The unique slug is the referee between two at once."""
    try:
        with transaction.atomic():
            return Organisation.objects.create(name=name, slug=slug, created_at=now)
    except IntegrityError:
        raise SlugTaken(slug) from None


def membership_set(
    *, organisation_id: int, email: str, role: Role, actor: User, now: datetime
) -> tuple[Membership, bool]:
    """Make the user with ``email`` a member of the organisation with ``role``, or give a member that role
    (``actor``: an owner there, or a superuser). Returns the membership and whether it is new."""
    with transaction.atomic():
        _require_owner(actor, organisation_id)
        user = User.objects.annotate(lower=Lower("email")).filter(lower=email.lower()).first()
        if user is None:
            raise ValidationFailed.for_field("email", "No user has this email.")
        membership, created = Membership.objects.get_or_create(
            user=user, organisation_id=organisation_id, defaults={"role": role, "created_at": now}
        )
        if not created and membership.role != role:
            _keep_an_owner(membership, losing=role != Role.OWNER)
            membership.role = role
            membership.save(update_fields=["role"])
    return membership, created


def membership_remove(*, organisation_id: int, user_id: int, actor: User) -> None:
    """Take ``user_id`` out of the organisation (``actor``: an owner there, or a superuser). The ``DELETE``
    waits for the writes that member has in flight there (they hold the row ``FOR SHARE``:
    ``core.locking.member_lock_sql``), and a write after it commits finds them gone."""
    with transaction.atomic():
        _require_owner(actor, organisation_id)
        membership = Membership.objects.filter(organisation_id=organisation_id, user_id=user_id).first()
        if membership is None:
            raise NotFound(f"User {user_id} is not a member of organisation {organisation_id}.")
        _keep_an_owner(membership, losing=True)
        membership.delete()


def _require_owner(actor: User, organisation_id: int) -> None:
    """Lock the organisation (0 in ``core.locking``'s order: before the actor's membership, 6), then refuse
    ``actor`` unless they own it or are a superuser (who gets 404 for an organisation that does not exist)."""
    if not locking.lock_organisation(organisation_id) and actor.is_superuser:
        raise NotFound(f"Organisation {organisation_id} does not exist.")
    access.require_member(actor, organisation_id, Role.OWNER, what=f"Organisation {organisation_id}")


def _keep_an_owner(membership: Membership, *, losing: bool) -> None:
    """The rule, once: an organisation's last owner is neither removed nor demoted (``losing``: the write
    takes ``membership``'s role away). Read under the organisation's lock (``_require_owner``), so of two
    owners removing each other, or themselves, at once, the second reads the first's removal."""
    if not losing or membership.role != Role.OWNER:
        return
    others = Membership.objects.filter(organisation_id=membership.organisation_id, role=Role.OWNER)
    if not others.exclude(pk=membership.pk).exists():
        raise LastOwner(organisation_id=membership.organisation_id, user_id=membership.user_id)
