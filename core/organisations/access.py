"""Who acts for which organisation (docs/contract.md §2.6, docs/decisions/0025-organisations.md): the one
check every operator's action passes, in Python here and as SQL in the claim policy
(``core.engine.ClaimPolicy.sql``), both reading the role ladder (``core.organisations.roles``).

A user's memberships are read once per request, with the user: the first question asked about a user
object reads them (one statement) and keeps them on it, and every request has its own user object
(``web.accounts.auth`` copies the cached one), so a membership changed by another request is seen by the
next request, never half-way through one. The write itself checks again under a lock
(``core.locking.member_lock_sql``): a member removed while acting is either refused or done before the
removal commits.

- A superuser (the platform's operator) acts on everything.
- A member acts on their organisation's resources and the claims on them, as far as their role allows;
  a lower role is 403 ``role_required``.
- Another organisation's resource is 404 to a member of any organisation: its existence is not
  revealed. A user who is nobody's member is not an operator: 403, as before organisations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db.models import Model

from core import locking
from core.errors import Forbidden, NotFound, NotOwner, ValidationFailed
from core.organisations.models import KEPT_ROLES, Membership, Organisation, keep_roles
from core.organisations.roles import Role, allows

if TYPE_CHECKING:  # the user model, settings.AUTH_USER_MODEL, as django-stubs resolves it: the core imports no app's
    from django.contrib.auth.models import _User as User


class RoleRequired(Forbidden):
    code = "role_required"

    def __init__(self, *, needed: Role, organisation_id: int, what: str):
        super().__init__(
            f"{what} needs the role {needed.value} or above in organisation {organisation_id}.",
            details={"role": needed.value, "organisationId": organisation_id},
        )


def roles_of(user: User) -> dict[int, str]:
    """``user``'s role in each organisation they belong to, read once per user object (per request)."""
    roles = user.__dict__.get(KEPT_ROLES)
    if roles is None:
        rows = Membership.objects.filter(user_id=user.pk).values_list("organisation_id", "role")
        roles = dict(rows) if user.pk is not None else {}
        keep_roles(user, roles)
    return roles


def forget(user: User) -> None:
    """Drop what ``user`` (this object) read of their memberships: the next question reads them again."""
    user.__dict__.pop(KEPT_ROLES, None)


def is_operator(user: User) -> bool:
    """Whether ``user`` operates anything: a superuser, or a member of some organisation."""
    return user.is_superuser or bool(roles_of(user))


def organisation_ids(user: User, role: Role = Role.STAFF) -> list[int]:
    """The organisations in which ``user`` has ``role`` or above (a superuser: those they are members of;
    ``everything`` says they act on all). The one array the SQL form of the policy reads."""
    return sorted(org for org, held in roles_of(user).items() if allows(held, role))


def organisation_of(model: type[Model], pk: int) -> int | None:
    """The organisation of ``model``'s row ``pk`` (a car, an event, a slot); None when there is no such row."""
    return model._default_manager.filter(pk=pk).values_list("organisation_id", flat=True).first()


def may_act(user: User, organisation_id: int, role: Role = Role.STAFF) -> bool:
    """Whether ``user`` may do, in ``organisation_id``, what needs ``role``."""
    if user.is_superuser:
        return True
    held = roles_of(user).get(organisation_id)
    return held is not None and allows(held, role)


def acts_in(user: User, organisation_id: int | None) -> bool:
    """Whether ``user`` acts as an operator on a resource of ``organisation_id`` (``acting_in``'s answer; None:
    not read, or there is no such resource): a superuser anywhere, a member inside their organisation."""
    return user.is_superuser or (organisation_id is not None and may_act(user, organisation_id))


def require(user: User, organisation_id: int, role: Role, *, what: str) -> None:
    """Refuse ``user`` ``what`` (a resource of ``organisation_id``, or an action on it) unless they may do
    what needs ``role`` there: 404 when it is another organisation's and they operate elsewhere, 403
    ``forbidden`` when they operate nothing, 403 ``role_required`` for a lower role."""
    if may_act(user, organisation_id, role):
        return
    held = roles_of(user).get(organisation_id)
    if held is not None:
        raise RoleRequired(needed=role, organisation_id=organisation_id, what=what)
    raise refusal(user, what=what)


def require_member(user: User | None, organisation_id: int, role: Role, *, what: str) -> None:
    """``require``, decided on ``user``'s membership row read and locked to the commit
    (``locking.lock_member``, last in the order), for a write in a transaction: a member removed or
    demoted while this runs is either refused here or removed after this commits. ``user`` None: the
    system (a command, a job), which acts on everything."""
    if user is None or user.is_superuser:
        return
    held = locking.lock_member(user.pk, organisation_id)
    if held is not None and allows(held, role):
        return
    if held is not None:
        raise RoleRequired(needed=role, organisation_id=organisation_id, what=what)
    raise refusal(user, what=what)


def refusal(user: User, *, what: str) -> NotFound | Forbidden:
    """The refusal of an operator's action on a resource outside ``user``'s organisations."""
    if is_operator(user):
        return NotFound(f"{what} does not exist.")
    return Forbidden("Only operators may do this.")


def acting_in(actor: User, *, owner_id: int, organisation: Callable[[], int | None]) -> int | None:
    """The organisation of what ``actor`` holds for ``owner_id`` (``organisation`` reads it), read only when
    the actor is a member of some organisation (a buyer's hold reads nothing more; a superuser acts
    everywhere): the cap exempts an operator only inside their organisations (``core.engine.Cap``). An
    operator holding for someone else outside them is refused: 404 (docs/contract.md §2.6)."""
    if actor.is_superuser or not roles_of(actor):
        return None
    organisation_id = organisation()
    if organisation_id is not None and owner_id != actor.pk and not may_act(actor, organisation_id):
        raise refusal(actor, what="What you ask to hold")
    return organisation_id


def host_organisation(host: User, organisation_id: int | None, *, actor: User, hours: int | None = None) -> int:
    """The organisation of ``host``'s new slots or hours, asked by ``actor`` (the host, or an operator for
    them): ``organisation_id`` when given — one the host belongs to, or, for an operator, one where
    ``require_host_or_member`` will let them act; else the organisation of the host's hours (``hours``), the
    one they belong to, the one the operator belongs to, or the one there is. 400 when that leaves none,
    or several to choose from (docs/decisions/0025-organisations.md)."""
    theirs = sorted({*roles_of(host), *([hours] if hours is not None else [])})
    if organisation_id is not None:
        if organisation_id not in theirs and actor.pk == host.pk:
            raise ValidationFailed.for_field(
                "organisationId", f"Host {host.pk} is not a member of organisation {organisation_id}."
            )
        return organisation_id
    for choices in (theirs, sorted(roles_of(actor)) if actor.pk != host.pk else []):
        if choices:
            return _one(choices)
    return _one(list(Organisation.objects.values_list("id", flat=True)[:2]))


def _one(choices: list[int]) -> int:
    if len(choices) != 1:
        raise ValidationFailed.for_field("organisationId", "Required: say which organisation this belongs to.")
    return choices[0]


def require_host_or_member(actor: User | None, host_id: int, organisation_id: int, *, what: str) -> None:
    """``require_member`` for a host's own rows (slots, hours): the host acts on their own time; an operator
    needs ``manager`` in its organisation; anyone else is refused 403 ``not_owner``."""
    if actor is None or actor.pk == host_id:
        return
    if not is_operator(actor):
        raise NotOwner(f"{what} belongs to another host.")
    require_member(actor, organisation_id, Role.MANAGER, what=what)


def scope(user: User, organisation_id: int | None, role: Role = Role.STAFF) -> list[int] | None:
    """The organisations an operator's read covers: ``organisation_id`` when given (checked by ``require``),
    else all of theirs with ``role``; None for a superuser's read of everything."""
    if organisation_id is not None:
        require(user, organisation_id, role, what=f"Organisation {organisation_id}")
        return [organisation_id]
    return None if user.is_superuser else organisation_ids(user, role)


def acting_organisation(user: User, organisation_id: int | None, role: Role) -> int:
    """The organisation a new resource of ``user`` goes in (``organisationId``): the one given (checked by
    ``require``: 404 when it is another organisation's, 403 ``role_required`` for a lower role), else the
    one organisation ``user`` belongs to (a superuser: the one there is); 400 when there are several to
    choose from, or none."""
    if organisation_id is None:
        if user.is_superuser:
            organisation_id = _one(list(Organisation.objects.values_list("id", flat=True)[:2]))
        else:
            organisation_id = _one(sorted(roles_of(user)))
    require(user, organisation_id, role, what=f"Organisation {organisation_id}")
    return organisation_id
