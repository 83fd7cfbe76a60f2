"""What the migrations that gave each resource its organisation share (docs/decisions/0025-organisations.md):
the rows that existed before organisations move into one default organisation, made only when there is
something to move (a fresh database gets none)."""

from django.utils import timezone

DEFAULT_SLUG = "default"


def _default(apps):
    organisation, _ = apps.get_model("organisations", "Organisation").objects.get_or_create(
        slug=DEFAULT_SLUG, defaults={"name": "Default organisation", "created_at": timezone.now()}
    )
    return organisation


def into_default(model_label: str):
    """A ``RunPython`` forwards function that puts every row of ``model_label`` (``app.Model``) without an
    organisation into the default organisation, making it on the first row to move."""

    def forwards(apps, schema_editor) -> None:
        model = apps.get_model(model_label)
        rows = model.objects.using(schema_editor.connection.alias).filter(organisation__isnull=True)
        if rows.exists():
            rows.update(organisation=_default(apps))

    return forwards


def operators_into_default(apps, schema_editor) -> None:
    """Before organisations an operator was any ``is_staff`` user, and acted on everything: each one that is
    not a superuser (who still sees everything) becomes an owner of the default organisation, so an existing
    deployment's operators keep what they could do."""
    operators = apps.get_model("accounts", "User").objects.filter(is_staff=True, is_superuser=False)
    if operators.exists():
        organisation = _default(apps)
        membership = apps.get_model("organisations", "Membership")
        membership.objects.bulk_create(
            [
                membership(user=user, organisation=organisation, role="owner", created_at=timezone.now())
                for user in operators
            ]
        )
