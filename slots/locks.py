"""The slots' row locks (3 in the order of core/locking.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from django.db import connection
from psycopg import sql

from core import locking
from core.claims import column
from core.statements import P, Statement, table
from slots.models import Slot


@functools.cache
def _slots_lock(
    user_lock: Callable[[sql.Composable], sql.Composable], *, owner: bool, reads: locking.Reads
) -> Statement:
    """The slots' lock statement, composed once per (user lock, whether the owner's is taken first,
    reads): the slots whose ids are in ``%(slots)s``, in id order."""
    lock_before = sql.SQL("AND {}").format(user_lock(P("owner"))) if owner else sql.SQL("")
    return Statement(
        sql.SQL("SELECT {} FROM {} s WHERE {} = ANY({}) {} ORDER BY {} FOR NO KEY UPDATE OF s").format(
            sql.SQL(", ").join(
                [column(Slot, f.name, "s") for f in Slot._meta.concrete_fields] + list(reads.columns.values())
            ),
            table(Slot),
            column(Slot, "id", "s"),
            P("slots"),
            lock_before,
            column(Slot, "id", "s"),
        )
    )


_SLOT_ATTNAMES = [f.attname for f in Slot._meta.concrete_fields]


def lock_slots(
    slot_ids: Iterable[int], *, owner: int | None = None, reads: locking.Reads = locking.NO_READS, **params: object
) -> dict[int, Slot]:
    """Serializes the seats of each slot (its ``booked`` counter). A missing id is simply absent.
    ``owner``: the user whose row the same statement locks first (order 1: a guest's, as ``lock_car``);
    ``reads`` (with their ``params``) are read by the same statement, from its snapshot (see
    ``lock_car``), each an attribute of its slot. One statement composed once (``_slots_lock``)."""
    locking.require_transaction("lock_slots")
    statement = _slots_lock(locking.user_lock_sql, owner=owner is not None, reads=reads)
    rows = statement.fetchall({"slots": sorted(set(slot_ids)), "owner": owner, **params})
    slots = {}
    for row in rows:
        slot = Slot.from_db(connection.alias, _SLOT_ATTNAMES, row[: len(_SLOT_ATTNAMES)])
        for name, value in zip(reads.columns, row[len(_SLOT_ATTNAMES) :], strict=True):
            setattr(slot, name, reads.loads[name](value) if name in reads.loads and value is not None else value)
        slots[slot.pk] = slot
    return slots


def slot_lock_sql(slot: sql.Composable, *, lock_before: sql.Composable | None = None) -> sql.Composable:
    """One slot's lock as a condition of a bigger statement (``slot``: its id there), after the lock of
    ``lock_before``, the condition of the lock the order puts before it (``user_lock_sql``): a sub-select
    runs below the statement's own row lock, so it is held before that one is asked for, and
    ``lock_before``'s before it. The seam a race control replaces (the
    transitions' statements are cached by this function)."""
    return sql.SQL("EXISTS (SELECT FROM {} s WHERE {} = {} AND {} FOR NO KEY UPDATE)").format(
        table(Slot), column(Slot, "id", "s"), slot, lock_before if lock_before is not None else sql.SQL("true")
    )
