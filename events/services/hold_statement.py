"""The one statement of a seat hold (by name or best available), composed once at import, and the
parts the transitions' statements share with it (the seats a group frees, the events they free)."""

from __future__ import annotations

from psycopg import sql

from core import claims, statements
from core.audit import services as audit
from core.audit.models import AuditEvent
from core.declarations import Along
from core.policy import Cap
from events import locks
from events.models import Event, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry
from events.services.rules import ENTRY_STATE_OF, ENTRY_SUBJECT, FREEING_STATES, HOLD_SUBJECT, Entry, State

# The seat hold after its locks (``SeatHolds.create``). The sub-statements of one statement share its
# snapshot and do not see each other's writes. ``picked``: the seats named (all of them), or best
# available: among the candidates locked, those free now, the first run of ``quantity`` adjacent seats
# in one row (front sections and rows first), else the first free seats in layout order. ``overdue``
# expires the groups with an overdue claim on a picked seat, whole (all their seats), and ``lapsed`` the
# waiting-list offers among them (a hold runs only while nobody waits: no offer of the seats follows); its UPDATE waits
# for a request holding one of them and skips a group that request moved. ``free`` judges by the
# snapshot, where an overdue hold is free (docs/contract.md §2.2), and reads ``overdue_claims`` so those UPDATEs have
# run before ``claimed`` inserts. When a hold overdue in the snapshot was confirmed meanwhile, the
# unique index refuses the claim: ``contended`` counts such claims, so that refusal is the confirm's
# win, not a backstop. ``held`` counts the seats the user holds live on the event (the cap,
# ``SeatHolds.cap``): read under the holder's lock, taken by the lock statement (none when the cap does
# not apply: ``limit`` is then NULL); ``free`` lets the hold through only within the cap.
_EVENT, _SEAT, _CLAIM, _GROUP, _ENTRY = (
    m._meta.db_table for m in (Event, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry)
)


_AUDIT = AuditEvent._meta.db_table


_AUDIT_COLUMNS = audit.SQL_COLUMNS


_G, _C = SeatHoldGroup, SeatClaim


# The names a seat hold's template uses: ``{g_…}`` a hold group's table and columns, ``{c_…}`` a seat
# claim's, ``{s_…}`` a seat's, ``{w_…}`` a waiting-list entry's.
_NAMES = {
    **statements.names(_G, "g_"),
    **statements.names(_C, "c_"),
    **statements.names(Seat, "s_"),
    **statements.names(WaitlistEntry, "w_"),
    "expired": sql.Literal(State.EXPIRED),
    "held": sql.Literal(State.HELD),
    "active": claims.ACTIVE.sql(_C, "c"),  # a claim in force: its seat is taken
    "overdue_claim": claims.OVERDUE.sql(_C, "c"),
}


def _seat_along(to_state: str) -> Along:
    """What a hold group's transition to ``to_state`` (or an expiry) writes beside the groups
    (``SeatHolds.along``). ``events``: their events' rows, ``FOR NO KEY UPDATE`` in id order, after the
    groups' locks and before they are written (ADR 0001 row 5: ``locks.freed_events_lock_sql``), with
    how many wait (a confirm's or a cancel's moves the booked-seat counter: ``_counted``;
    ``event_confirmed_within_total`` the backstop); a group whose seats free while people wait is written
    only in a transaction (the offer follows it: ``SeatHolds.after``). ``mirrored``: the seat claims follow
    their group; ``entries``: the waiting-list offers the groups were, accepted or lapsed, with their
    audit events. Returns the seat codes of a group written alone and the events to offer seats of."""
    P, to = statements.P, sql.Literal(to_state)
    names = {
        **_NAMES,
        **statements.names(Event, "e_"),
        "confirmed": sql.Literal(State.CONFIRMED),
        "cancelled": sql.Literal(State.CANCELLED),
        "freeing": sql.SQL(", ").join(map(sql.Literal, FREEING_STATES)),
        "offered": sql.Literal(Entry.OFFERED),
        "accepted": sql.Literal(Entry.ACCEPTED),
        "entry_expired": sql.Literal(Entry.EXPIRED),
        "ending": sql.SQL(", ").join(map(sql.Literal, ENTRY_STATE_OF)),
    }
    by_request = sql.SQL("w.group_state = {}").format(to)
    return Along(
        gate=(("events", _counted(to_state, names) if to_state in COUNTED else _freed_events()),),
        holds=sql.SQL(
            "t.to_state IN ({freeing}) "
            "AND EXISTS (SELECT FROM events ev WHERE ev.id = t.event_id AND ev.waiting_count > 0)"
        ).format(**names),
        ctes=(
            (
                "mirrored",
                sql.SQL(
                    "UPDATE {c_table} sc SET {c_state} = m.{g_state} FROM moved m WHERE sc.{c_group} = m.id "
                    "RETURNING sc.{c_seat} AS seat_id"
                ).format(**names),
            ),
            (
                "entries",
                sql.SQL("""UPDATE {w_table} w
    SET {w_state} = CASE WHEN m.{g_state} = {confirmed} THEN {accepted} ELSE {entry_expired} END,
        {w_updated_at} = m.{g_updated_at}
    FROM moved m WHERE w.{w_hold_group} = m.id AND w.{w_state} = {offered} AND m.{g_state} IN ({ending})
    RETURNING w.id, w.{w_event} AS event_id, w.{w_hold_group} AS hold_group_id, w.{w_state} AS state,
              m.{g_state} AS group_state""").format(**names),
            ),
            (
                "entry_events",
                statements.audit_rows(
                    source=sql.SQL("entries w"),
                    occurred_at=P("occurred_at"),
                    actor=sql.SQL("CASE WHEN {} THEN %(actor)s::bigint END").format(by_request),
                    actor_label=sql.SQL("CASE WHEN {} THEN %(actor_label)s ELSE %(expiry_actor)s END").format(
                        by_request
                    ),
                    subject_type=sql.Literal(ENTRY_SUBJECT),
                    subject_id=sql.SQL("w.id::text"),
                    event_type=sql.SQL("w.state"),
                    from_state=sql.Literal(Entry.OFFERED),
                    to_state=sql.SQL("w.state"),
                    metadata=sql.SQL("jsonb_build_object('eventId', w.event_id, 'holdGroupId', w.hold_group_id)"),
                    request_id=P("trace_id"),
                ),
            ),
        ),
        returns=(
            sql.SQL(
                "ARRAY(SELECT s.{s_code} FROM mirrored mc JOIN {s_table} s ON s.id = mc.seat_id "
                "ORDER BY s.{s_section}, s.{s_row}, s.{s_number})"
            ).format(**names),
            _waiting_events(names),
        ),
        batch_returns=(_waiting_events(names),),
    )


# The transitions that move the booked-seat counter, and by how many of the group's seats.
COUNTED: dict[str, sql.SQL] = {State.CONFIRMED: sql.SQL("+"), State.CANCELLED: sql.SQL("-")}


def _counted(to_state: str, names: dict) -> sql.Composable:
    """A confirm's or a cancel's event lock is the counter's ``UPDATE`` itself, by the group's seats when it
    is written (not held for a transaction: ``Along.holds``, judged here on the row's newest version, as
    the ``UPDATE`` reads it): the one access to the event row in the statement. Returns it with how many
    wait."""
    return sql.SQL("""UPDATE {e_table} e
    SET {e_confirmed_seats} = e.{e_confirmed_seats} + CASE
        WHEN t.to_state = {to}
             AND NOT (t.to_state IN ({freeing}) AND e.{e_waiting_count} > 0 AND NOT %(in_transaction)s)
        THEN {sign} t.{g_seat_count} ELSE 0 END
    FROM target t WHERE e.id = t.{g_event} AND t.to_state IS NOT NULL
    RETURNING e.id, e.{e_waiting_count}""").format(**names, to=sql.Literal(to_state), sign=COUNTED[to_state])


def _freed_events() -> sql.Composable:
    """A release's or an expiry's event lock (in id order: an expiry's batch has several events)."""
    return locks.freed_events_lock_sql(sql.SQL("SELECT t.event_id FROM target t WHERE t.to_state IS NOT NULL"))


def _waiting_events(names: dict) -> sql.Composable:
    """The events whose seats a statement freed while people wait: their offers follow it."""
    return sql.SQL(
        "ARRAY(SELECT ev.id FROM events ev WHERE ev.waiting_count > 0 "
        "AND EXISTS (SELECT FROM moved m WHERE m.{g_event} = ev.id AND m.{g_state} IN ({freeing})))"
    ).format(**names)


# The seats named (all of them).
_PICK_NAMED = sql.SQL("SELECT unnest(%(seats)s::bigint[]) AS id")


# Best available: among the candidates locked, those free now, the first run of ``quantity`` adjacent seats in one
# row (front sections and rows first), else the first free seats in layout order.
_PICK_BEST = sql.SQL("""
    WITH free_now AS (
        SELECT s.id, s.{s_section} AS section, s.{s_row} AS row, s.{s_number} AS number,
               s.{s_number} - ROW_NUMBER() OVER (PARTITION BY s.{s_section}, s.{s_row} ORDER BY s.{s_number}) AS run
        FROM {s_table} s
        WHERE s.id = ANY(%(seats)s::bigint[])
          AND NOT EXISTS (SELECT FROM {c_table} c WHERE c.{c_event} = s.{s_event} AND c.{c_seat} = s.id AND {active})
    ), block AS (
        SELECT section, row, run FROM free_now GROUP BY section, row, run
        HAVING COUNT(*) >= %(quantity)s ORDER BY section, row, MIN(number) LIMIT 1
    ), adjacent AS (
        SELECT f.id FROM free_now f JOIN block b ON (b.section, b.row, b.run) = (f.section, f.row, f.run)
        ORDER BY f.number LIMIT %(quantity)s
    )
    SELECT id FROM adjacent
    UNION ALL
    (SELECT id FROM free_now WHERE NOT EXISTS (SELECT FROM adjacent) ORDER BY section, row, number LIMIT %(quantity)s)
""").format(**_NAMES)


def _seat_hold_statement(picked: sql.Composable, cap: Cap) -> statements.Statement:
    P = statements.P
    expiry = {"occurred_at": P("occurred_at"), "actor": sql.NULL, "actor_label": P("expiry_actor")}
    return statements.Statement(
        sql.SQL("""
WITH picked AS MATERIALIZED ({picked}
), overdue AS (
    UPDATE {g_table} g SET {g_state} = {expired}, {g_updated_at} = %(now)s
    WHERE {overdue_group} AND g.id IN (
        SELECT c.{c_group} FROM {c_table} c JOIN picked p ON p.id = c.{c_seat} WHERE {overdue_claim})
    RETURNING g.id, g.{g_event} AS event_id
), overdue_claims AS (
    UPDATE {c_table} c SET {c_state} = {expired} FROM overdue o WHERE c.{c_group} = o.id RETURNING c.id
), expired_events AS ({expired_events}
), lapsed AS (
    UPDATE {w_table} w SET {w_state} = {entry_expired}, {w_updated_at} = %(now)s FROM overdue o
    WHERE w.{w_hold_group} = o.id AND w.{w_state} = {offered}
    RETURNING w.id, w.{w_event} AS event_id, w.{w_hold_group} AS hold_group_id
), lapsed_events AS ({lapsed_events}
), taken AS (
    SELECT c.{c_seat} AS seat_id FROM {c_table} c JOIN picked p ON p.id = c.{c_seat} WHERE {active}
), held AS (
    SELECT COALESCE(SUM(g.{g_seat_count}), 0) AS seats FROM {g_table} g
    WHERE %(limit)s::bigint IS NOT NULL AND g.{g_user} = %(user)s AND g.{g_event} = %(event)s AND {counted}
), free AS (
    SELECT FROM (SELECT COUNT(*) FROM overdue_claims) AS after_the_expiry, held
    WHERE NOT EXISTS (SELECT FROM taken) AND (SELECT COUNT(*) FROM picked) = %(quantity)s
      AND (%(limit)s::bigint IS NULL OR held.seats + %(quantity)s <= %(limit)s::bigint)
), created AS (
    INSERT INTO {g_table} ({g_id}, {g_booking_group_id}, {g_event}, {g_user}, {g_state}, {g_seat_count}, {g_expires_at},
                           {g_idempotency_key}, {g_created_at}, {g_updated_at}, {g_confirmed_at}, {g_cancelled_at})
    SELECT %(group)s, NULL, %(event)s, %(user)s, {held}, %(quantity)s, %(expires_at)s, %(idempotency_key)s,
           %(now)s, %(now)s, NULL, NULL
    FROM free
    RETURNING id
), claimed AS (
    INSERT INTO {c_table} ({c_group}, {c_event}, {c_seat}, {c_state}, {c_expires_at})
    SELECT c.id, %(event)s, p.id, {held}, %(expires_at)s FROM created c CROSS JOIN picked p
    ON CONFLICT ({c_seat}) WHERE {blocking} DO NOTHING
    RETURNING {c_seat}
), created_event AS ({created_event}
)
SELECT
    (SELECT COUNT(*) FROM overdue),
    ARRAY(SELECT seat_id FROM taken ORDER BY seat_id),
    (SELECT seats FROM held),
    ARRAY(SELECT id FROM picked ORDER BY id),
    ARRAY(SELECT s.{s_code} FROM picked p JOIN {s_table} s ON s.id = p.id ORDER BY p.id),
    (SELECT COUNT(DISTINCT (s.{s_section}, s.{s_row})) = 1 AND MAX(s.{s_number}) - MIN(s.{s_number}) = COUNT(*) - 1
     FROM picked p JOIN {s_table} s ON s.id = p.id),
    (SELECT COUNT(*) FROM claimed),
    (SELECT COUNT(*) FROM {c_table} c JOIN picked p ON p.id = c.{c_seat}
     WHERE {overdue_claim} AND c.{c_group} NOT IN (SELECT id FROM overdue))
""").format(
            **_NAMES,
            picked=picked,
            overdue_group=claims.OVERDUE.sql(_G, "g"),
            counted=cap.counted(_G, "g"),
            blocking=claims.BLOCKING.sql(_C),
            entry_expired=sql.Literal(WaitlistEntry.State.EXPIRED),
            offered=sql.Literal(WaitlistEntry.State.OFFERED),
            expired_events=statements.audit_rows(
                source=sql.SQL("overdue o"),
                **expiry,
                subject_type=sql.Literal(HOLD_SUBJECT),
                subject_id=sql.SQL("o.id::text"),
                event_type=sql.Literal(State.EXPIRED),
                from_state=sql.Literal(State.HELD),
                to_state=sql.Literal(State.EXPIRED),
                metadata=sql.SQL("jsonb_build_object('eventId', o.event_id, 'bookingGroupId', NULL)"),
                request_id=P("trace_id"),
            ),
            lapsed_events=statements.audit_rows(
                source=sql.SQL("lapsed w"),
                **expiry,
                subject_type=sql.Literal(ENTRY_SUBJECT),
                subject_id=sql.SQL("w.id::text"),
                event_type=sql.Literal(WaitlistEntry.State.EXPIRED),
                from_state=sql.Literal(WaitlistEntry.State.OFFERED),
                to_state=sql.Literal(WaitlistEntry.State.EXPIRED),
                metadata=sql.SQL("jsonb_build_object('eventId', w.event_id, 'holdGroupId', w.hold_group_id)"),
                request_id=P("trace_id"),
            ),
            created_event=statements.audit_rows(
                source=sql.SQL("created c"),
                occurred_at=P("occurred_at"),
                actor=P("actor"),
                actor_label=P("actor_label"),
                subject_type=sql.Literal(HOLD_SUBJECT),
                subject_id=sql.SQL("c.id::text"),
                event_type=sql.Literal("CREATED"),
                from_state=sql.Literal(""),
                to_state=sql.Literal(State.HELD),
                metadata=sql.SQL("""jsonb_build_object(
               'eventId', %(event)s::bigint,
               'seatCodes', (SELECT jsonb_agg(s.{s_code} ORDER BY s.id) FROM picked p JOIN {s_table} s ON s.id = p.id),
               'expiresAt', %(expires_at_json)s::jsonb)""").format(**_NAMES),
                request_id=P("trace_id"),
            ),
        )
    )
