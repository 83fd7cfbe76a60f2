"""Whose audit events a webhook endpoint receives: its organisation's (docs/contract.md §3.7, §2.6). Each
domain registers, for the audit subjects it records, the path from the subject's row to the organisation
(``register("reservation", Reservation, "car__organisation")``), in its ``ready()``; the fan-out reads the
organisation of each event from it, one composed expression. A subject nobody registered (none yet) goes to
no organisation's endpoint."""

from __future__ import annotations

from typing import cast

from django.db import connection
from django.db.models import Field, Model
from psycopg import sql

from core.claims import column
from core.statements import table

_PATHS: dict[str, tuple[type[Model], str]] = {}

# The shape of a subject id that casts to its key's type: any other reads as no organisation, never as a
# failed cast that would stop the fan-out.
_SHAPES = {"bigint": "^[0-9]{1,18}$", "integer": "^[0-9]{1,9}$", "uuid": "^[0-9a-fA-F-]{36}$"}


def register(subject_type: str, model: type[Model], path: str) -> None:
    """The organisation of a ``subject_type`` event is its ``model`` row's ``path`` (``__`` between foreign keys,
    ending at ``organisation``)."""
    _PATHS[subject_type] = (model, path)


def _through(model: type[Model], names: list[str], key: sql.Composable) -> sql.Composable:
    """The value at the end of ``names`` (foreign keys) from ``model``'s row ``key``: one sub-select a key."""
    value = sql.SQL("(SELECT {} FROM {} WHERE {} = {})").format(
        column(model, names[0]), table(model), column(model, model._meta.pk.name), key
    )
    if len(names) == 1:
        return value
    related = cast(Field, model._meta.get_field(names[0])).related_model
    assert related is not None and not isinstance(related, str)  # a foreign key to a model
    return _through(related, names[1:], value)


def organisation_sql(subject_type: sql.Composable, subject_id: sql.Composable) -> sql.Composable:
    """The organisation of the audit event whose subject is (``subject_type``, ``subject_id``: text), as SQL."""
    if not _PATHS:
        return sql.NULL
    cases = []
    for name, (model, path) in sorted(_PATHS.items()):
        db_type = cast(str, model._meta.pk.db_type(connection))
        key = sql.SQL("CAST(CASE WHEN {} ~ {} THEN {} END AS {})").format(
            subject_id, sql.Literal(_SHAPES[db_type]), subject_id, sql.SQL(db_type)
        )
        cases.append(sql.SQL("WHEN {} THEN {}").format(sql.Literal(name), _through(model, path.split("__"), key)))
    return sql.SQL("CASE {} {} END").format(subject_type, sql.SQL(" ").join(cases))
