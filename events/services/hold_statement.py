"""The one statement of a seat hold (by name or best available), composed once at import, and the
parts the transitions' statements share with it (the seats a group frees, the events they free)."""

from __future__ import annotations

import functools

from psycopg import sql

from core import claims, locking, statements
from core.audit import services as audit
from core.audit.models import AuditEvent
from core.declarations import Along
from core.policy import Cap
from events import locks
from events.models import Event, QueueEntry, Seat, SeatClaim, SeatHoldGroup, WaitlistEntry
from events.services.rules import ENTRY_STATE_OF, ENTRY_SUBJECT, FREEING_STATES, HOLD_SUBJECT, Entry, State
from web.accounts.models import User

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


# The candidates of a hold by codes: the seats named, each with the claim sequence its snapshot reads and
# whether an active claim was on it then (at ``%(free_at)s``).
_CODES = sql.SQL("""candidates AS MATERIALIZED (
    SELECT s.id, s.{s_code} AS code, false AS short, s.{s_section} AS section, s.{s_row} AS row,
           s.{s_number} AS number, s.{seq} AS seq, {taken} AS taken
    FROM {s_table} s WHERE s.{s_event} = %(event)s AND s.{s_code} = ANY(%(codes)s::text[])
)""")


# The candidates of a best-available hold: the event's seats free at ``%(free_at)s`` by the snapshot, each
# with the length of its run (free seats numbered one after the other in a row: ``vacant``), the first
# ``%(reach)s`` of them in order of preference (those in a run of ``quantity`` first, front sections and
# rows first: a bounded sort, far more than the window, so that skipping the seats others hold locked
# still leaves enough).
_BEST = sql.SQL("""vacant AS MATERIALIZED (
    SELECT id, section, row, number, COUNT(*) OVER (PARTITION BY section, row, run) AS n FROM (
        SELECT s.id, s.{s_section} AS section, s.{s_row} AS row, s.{s_number} AS number,
               s.{s_number} - ROW_NUMBER() OVER (PARTITION BY s.{s_section}, s.{s_row} ORDER BY s.{s_number}) AS run
        FROM {s_table} s WHERE s.{s_event} = %(event)s AND NOT {taken}
    ) numbered
), candidates AS MATERIALIZED (
    SELECT f.id, s.{s_code} AS code, f.n < %(quantity)s AS short, f.section, f.row, f.number, s.{seq} AS seq,
           false AS taken
    FROM vacant f JOIN {s_table} s ON s.id = f.id
    ORDER BY f.n < %(quantity)s, f.section, f.row, f.number LIMIT %(reach)s
)""")


# Picked by codes: every seat named, locked, and not claimed since the snapshot.
_PICK_CODES = sql.SQL("SELECT c.* FROM candidates c JOIN locked l ON l.id = c.id WHERE {fresh}")


# Picked best available: among the candidates locked and not claimed since the snapshot, the first run of
# ``quantity`` adjacent seats in one row (front sections and rows first), else the first in layout order.
_PICK_BEST = sql.SQL("""
    WITH free_now AS (
        SELECT c.*, c.number - ROW_NUMBER() OVER (PARTITION BY c.section, c.row ORDER BY c.number) AS run
        FROM candidates c JOIN locked l ON l.id = c.id WHERE {fresh}
    ), block AS (
        SELECT section, row, run FROM free_now GROUP BY section, row, run
        HAVING COUNT(*) >= %(quantity)s ORDER BY section, row, MIN(number) LIMIT 1
    ), adjacent AS (
        SELECT f.* FROM free_now f JOIN block b ON (b.section, b.row, b.run) = (f.section, f.row, f.run)
        ORDER BY f.number LIMIT %(quantity)s
    )
    SELECT id, code, short, section, row, number, seq, taken FROM adjacent
    UNION ALL
    (SELECT id, code, short, section, row, number, seq, taken FROM free_now WHERE NOT EXISTS (SELECT FROM adjacent)
     ORDER BY section, row, number LIMIT %(quantity)s)""")


# The kinds of seat hold, each one statement: (its candidates, its pick, how it locks the seats).
BY_CODES, BEST_SKIP, BEST_WAIT, OFFER = "codes", "best-skip", "best-wait", "offer"
_KINDS = {
    BY_CODES: (_CODES, _PICK_CODES, locks.WAIT),
    BEST_SKIP: (_BEST, _PICK_BEST, locks.SKIP),
    BEST_WAIT: (_BEST, _PICK_BEST, locks.WAIT),
    OFFER: (_BEST, _PICK_BEST, locks.READ),
}


def _json_time(at: sql.Composable) -> sql.Composable:
    """A ``timestamptz`` as ``DjangoJSONEncoder`` writes it (UTC, milliseconds when there are any, ``Z``), as
    ``jsonb``: the audit metadata's times read the same whether Python or a statement wrote them."""
    return sql.SQL(
        """to_jsonb(to_char({at} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN mod(extract(microseconds FROM {at})::bigint, 1000000) <> 0
                THEN to_char({at} AT TIME ZONE 'UTC', '.MS') ELSE '' END || 'Z')"""
    ).format(at=at)


@functools.cache
def _seat_hold_statement(kind: str, cap: Cap, seams: tuple) -> statements.Statement:
    """A seat hold of ``kind``, one statement, composed once per (kind, ``seams``: the lock seams a race
    control replaces, ``SeatHolds.decide``)."""
    claim_lock, fresh, event_lock, seat_locks = seams
    candidates, pick, how = _KINDS[kind]
    P, seq = statements.P, sql.Identifier(locking.CLAIM_SEQ)
    best = kind != BY_CODES
    seat_fresh = fresh(sql.SQL("c.seq"), sql.SQL("l.{}").format(seq))
    qe = statements.names(QueueEntry, "q_", "q")
    admitted = sql.SQL("""EXISTS (
        SELECT FROM {q_table} q WHERE {q_token} = %(queue_token)s AND {q_event} = e.id AND {q_user} = %(queue_user)s
          AND {q_state} = {q_admitted} AND {q_admitted_until} > %(now)s)""").format(
        **qe, q_admitted=sql.Literal(QueueEntry.State.ADMITTED)
    )
    expiry = {"occurred_at": P("occurred_at"), "actor": sql.NULL, "actor_label": P("expiry_actor")}
    return statements.Statement(
        sql.SQL("""
WITH seen AS MATERIALIZED (
    SELECT e.*, e.{e_queue_enabled} AND {admitted} AS admitted, {seen_owner} AS owner,
           (SELECT COALESCE(SUM(g.{g_seat_count}), 0) FROM {g_table} g
            WHERE %(limit)s::bigint IS NOT NULL AND g.{g_user} = %(user)s AND g.{g_event} = e.id AND {counted}) AS held
    FROM ({event_read}) e
), {candidates}, wanted AS (
    SELECT FROM seen
    WHERE sales_open AND event_date > %(now)s AND (NOT queue_enabled OR admitted OR %(exempt)s)
      AND (%(offer)s OR waiting_count = 0) AND {enough}
      AND (%(limit)s::bigint IS NULL OR held + %(quantity)s <= %(limit)s::bigint)
), owner AS MATERIALIZED ({owner_lock}
), event AS MATERIALIZED ({event_lock}
), locked AS MATERIALIZED ({seat_locks}
), judged AS MATERIALIZED (
    SELECT ev.{e_sales_open} AS sales_open, ev.{e_event_date} AS event_date, ev.{e_waiting_count} AS waiting,
           ev.{e_queue_enabled} AS queue_enabled, ev.{e_hold_minutes} AS hold_minutes,
           %(owner)s::bigint IS NULL OR {owner_fresh} AS owner_fresh,
           ARRAY(SELECT c.code FROM candidates c JOIN locked l ON l.id = c.id WHERE NOT {seat_fresh} ORDER BY c.id)
           AS moved
    FROM event ev CROSS JOIN seen LEFT JOIN owner ON true
), picked AS MATERIALIZED ({pick}
), adjacent AS (
    SELECT COUNT(DISTINCT (section, row)) = 1 AND MAX(number) - MIN(number) = COUNT(*) - 1 AS adjacent FROM picked
), go AS (
    SELECT FROM judged j, adjacent a
    WHERE j.sales_open AND j.event_date > %(now)s AND (%(offer)s OR j.waiting = 0) AND j.owner_fresh
      AND (NOT j.queue_enabled OR (SELECT admitted FROM seen) OR %(exempt)s)
      AND (SELECT COUNT(*) FROM picked) = %(quantity)s
      AND (a.adjacent OR %(apart)s OR NOT {adjacent_free})
), doomed AS MATERIALIZED (
    SELECT g.id, g.{g_state} AS state FROM {g_table} g
    WHERE g.id IN (SELECT c.{c_group} FROM {c_table} c JOIN picked p ON p.id = c.{c_seat} WHERE {overdue_claim})
      AND EXISTS (SELECT FROM go)
    ORDER BY g.id FOR NO KEY UPDATE
), overdue AS (
    UPDATE {g_table} g SET {g_state} = {expired}, {g_updated_at} = %(now)s
    WHERE {overdue_group} AND g.id IN (SELECT id FROM doomed)
    RETURNING g.id, g.{g_event} AS event_id
), overdue_claims AS (
    UPDATE {c_table} c SET {c_state} = {expired} FROM overdue o WHERE c.{c_group} = o.id RETURNING c.id
), expired_events AS ({expired_events}
), lapsed AS (
    UPDATE {w_table} w SET {w_state} = {entry_expired}, {w_updated_at} = %(now)s FROM overdue o
    WHERE w.{w_hold_group} = o.id AND w.{w_state} = {offered}
    RETURNING w.id, w.{w_event} AS event_id, w.{w_hold_group} AS hold_group_id
), lapsed_events AS ({lapsed_events}
), clear AS (
    SELECT j.hold_minutes FROM go, judged j, (SELECT COUNT(*) FROM overdue_claims) AS after_the_expiry
    WHERE NOT EXISTS (SELECT FROM doomed WHERE state = {confirmed})
), created AS (
    INSERT INTO {g_table} ({g_id}, {g_booking_group_id}, {g_event}, {g_user}, {g_state}, {g_seat_count}, {g_expires_at},
                           {g_idempotency_key}, {g_created_at}, {g_updated_at}, {g_confirmed_at}, {g_cancelled_at})
    SELECT %(group)s, NULL, %(event)s, %(user)s, {held}, %(quantity)s, %(now)s + make_interval(mins => f.hold_minutes),
           %(idempotency_key)s, %(now)s, %(now)s, NULL, NULL
    FROM clear f
    RETURNING id, {g_expires_at} AS expires_at
), claimed AS (
    INSERT INTO {c_table} ({c_group}, {c_event}, {c_seat}, {c_state}, {c_expires_at})
    SELECT c.id, %(event)s, p.id, {held}, c.expires_at FROM created c CROSS JOIN picked p
    RETURNING {c_seat}
), created_event AS ({created_event}
), owner_moved AS ({owner_moved}
), seats_moved AS (
    UPDATE {s_table} s SET {seq} = s.{seq} + 1
    WHERE s.id IN (SELECT id FROM picked) AND NOT %(offer)s AND EXISTS (SELECT FROM created)
)
SELECT
    (SELECT id FROM seen), {seen_columns}, (SELECT admitted FROM seen), (SELECT held FROM seen),
    ARRAY(SELECT code FROM candidates ORDER BY id), ARRAY(SELECT code FROM candidates WHERE taken ORDER BY id),
    {available},
    EXISTS (SELECT FROM judged), (SELECT sales_open FROM judged), (SELECT event_date FROM judged),
    (SELECT waiting FROM judged), (SELECT queue_enabled FROM judged), (SELECT owner_fresh FROM judged),
    (SELECT moved FROM judged),
    ARRAY(SELECT id FROM picked ORDER BY id), ARRAY(SELECT code FROM picked ORDER BY id),
    (SELECT COUNT(*) FROM overdue), (SELECT expires_at FROM created), (SELECT COUNT(*) FROM claimed)
""").format(
            **_NAMES,
            **statements.names(Event, "e_"),
            seen_columns=sql.SQL(", ").join(
                sql.SQL("(SELECT {} FROM seen)").format(claims.column(Event, n)) for n in locks.HOLD_EVENT_COLUMNS
            ),
            admitted=admitted,
            event_read=event_lock(),
            seen_owner=locking.seen_sql(User, P("owner")),
            counted=cap.counted(_G, "g"),
            candidates=candidates.format(
                **_NAMES,
                seq=seq,
                taken=sql.SQL(
                    "EXISTS (SELECT FROM {c_table} c WHERE c.{c_event} = s.{s_event} AND c.{c_seat} = s.id AND {taken})"
                ).format(**_NAMES, taken=claims.ACTIVE.sql(_C, "c", now=P("free_at"))),
            ),
            enough=sql.SQL(
                "(SELECT COUNT(*) FROM vacant) >= %(quantity)s"
                if best
                else "(SELECT COUNT(*) FROM candidates) = %(quantity)s "
                "AND NOT EXISTS (SELECT FROM candidates WHERE taken)"
            ),
            # Order 1, 2, 3: each lock's condition reads the one before it (run below its own row lock), so
            # that one is held first: the holder (when the cap applies), the event, the seats; the overdue
            # groups (4) after them (``doomed`` reads ``go``).
            owner_lock=claim_lock(User, P("owner"), lock_before=sql.SQL("EXISTS (SELECT FROM wanted)")),
            event_lock=event_lock(
                lock_before=sql.SQL(
                    "EXISTS (SELECT FROM wanted) AND (%(owner)s::bigint IS NULL OR EXISTS (SELECT FROM owner))"
                )
            ),
            seat_locks=seat_locks("candidates", how=how, lock_before=sql.SQL("EXISTS (SELECT FROM event)")),
            owner_fresh=fresh(sql.SQL("seen.owner"), sql.SQL("owner.{}").format(seq)),
            seat_fresh=seat_fresh,
            pick=pick.format(fresh=seat_fresh),
            adjacent_free=sql.SQL("EXISTS (SELECT FROM vacant WHERE n >= %(quantity)s)" if best else "false"),
            available=sql.SQL("(SELECT COUNT(*) FROM vacant)" if best else "NULL::bigint"),
            seq=seq,
            confirmed=sql.Literal(State.CONFIRMED),
            overdue_group=claims.OVERDUE.sql(_G, "g"),
            entry_expired=sql.Literal(WaitlistEntry.State.EXPIRED),
            offered=sql.Literal(WaitlistEntry.State.OFFERED),
            owner_moved=locking.claim_moved_sql(User, P("owner"), when=sql.SQL("EXISTS (SELECT FROM created)")),
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
               'seatCodes', (SELECT jsonb_agg(p.code ORDER BY p.id) FROM picked p),
               'expiresAt', {expires})""").format(expires=_json_time(sql.SQL("c.expires_at"))),
                request_id=P("trace_id"),
            ),
        )
    )


def seat_hold_statement(kind: str, cap: Cap) -> statements.Statement:
    """The seat hold of ``kind`` (``SeatHolds.decide``), composed once.

    The sub-statements of one statement share its snapshot, taken when it starts, and do not see each other's
    writes. ``seen`` reads from it the event (its sales, date, hold length, waiting counter, queue switch; whether
    the X-Queue-Token is an admission of the user now), the holder's claim sequence and the seats the holder holds
    live on the event (the cap, ``SeatHolds.cap``: none when it does not apply, ``limit`` and ``owner`` NULL);
    ``candidates``: the seats named, or the free ones in order of preference, each with its claim sequence. A hold
    those refuse was refused by what was true when it was asked, takes no lock and writes nothing (``wanted``).
    Otherwise ``owner`` (``locking.claim_lock_sql``), ``event`` (``locks.hold_event_sql``, which ``seen`` reads
    unlocked) and ``locked`` (``locks.seat_locks_sql``) take their locks in the order of core/locking.py and return
    the rows' newest versions. ``judged``: the event as locked (a close of sales or a queue switched on that
    committed is seen), whether the holder's count is still the truth and which seats a hold claimed since the
    snapshot (``locking.fresh_sql``: their sequences moved). ``picked``: the seats locked and not claimed since (by
    codes: every one; best available: a run of ``quantity`` adjacent where it can). Only behind ``go`` does anything
    else run: ``doomed`` locks the groups with an overdue claim on a picked seat and reads their newest state;
    ``overdue`` expires those still held, whole, with their claims, the waiting-list offers they were (``lapsed``)
    and the audit events. A group overdue in the snapshot that a confirm confirmed meanwhile keeps its seat: nothing
    more is written (the confirm won). ``created`` inserts the group, ``claimed`` its claims: a plain ``INSERT`` on
    the partial unique index ``seat_claim_one_active_per_seat``, the backstop: when it refuses, the statement fails
    whole, nothing of it is kept. ``owner_moved`` and ``seats_moved`` move the claim sequences of the holder and of
    the seats claimed (not an offer's: it locks none)."""
    return _seat_hold_statement(
        kind, cap, (locking.claim_lock_sql, locking.fresh_sql, locks.hold_event_sql, locks.seat_locks_sql)
    )
