"""The bench's own data, written with bulk SQL where the ORM would take minutes. Every row is one the
services could have written: it passes every constraint and every rule the services check (one active
hold per car, a seat in one active claim, at most five active bookings per guest and one per host,
counters equal to their claims). Bulk rows get no audit events; the measured requests write theirs.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import connection, transaction
from django.utils import timezone

from core.organisations.models import Membership, Organisation
from core.organisations.roles import Role
from events.models import Event, SeatClaim, SeatHoldGroup
from events.services import events as events_events
from events.services import rules
from slots.availability import AvailabilityDocument, availability_clean
from slots.services import slots as slots_slots
from web.accounts.models import User as Account

_batch = itertools.count(1)
_started = f"{time.time_ns() // 1_000_000:x}"  # names stay unique in a database kept with --keep-db
OVERDUE_BY = timedelta(hours=1)  # how long ago the sweep's holds expired


@dataclass(frozen=True)
class User:
    id: int
    token: str


def _tag(kind: str) -> str:
    """A name unique in this bench database, for the rows of one batch."""
    return f"{kind}-{_started}-{next(_batch)}"


def _rows(query: str, params: dict) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def analyze(*tables: str) -> None:
    """What autovacuum does on a live system within a minute of a bulk load: fresh planner statistics
    (of ``tables``, or of the whole database). Every loader below ends with it, so a scenario measures
    the plans of a steady state, not those of statistics that predate its data."""
    _rows(f"ANALYZE {', '.join(tables)}", {})


# --- the organisation ------------------------------------------------------------------------------


def organisation() -> int:
    """The organisation every car, event, slot and hours the bench makes belongs to (made on first use)."""
    made, _ = Organisation.objects.get_or_create(slug="bench", defaults={"name": "Bench", "created_at": timezone.now()})
    return made.pk


# --- users -----------------------------------------------------------------------------------------


def users(count: int, *, role: str = "GUEST") -> list[User]:
    """``count`` users with API tokens (the token key is unique by construction: it ends in the id)."""
    tag = _tag(role.lower())
    rows = _rows(
        """
        WITH created AS (
            INSERT INTO accounts_user (password, is_superuser, username, first_name, last_name, email,
                                       is_staff, is_active, date_joined, name, roles)
            SELECT '!', false, %(tag)s || '-' || n, '', '', %(tag)s || '-' || n || '@bench.example.com',
                   false, true, now(), 'Bench ' || %(tag)s || ' ' || n, ARRAY[%(role)s]::varchar(8)[]
            FROM generate_series(1, %(count)s) AS n
            RETURNING id)
        INSERT INTO authtoken_token (key, user_id, created)
        SELECT substr(md5(%(tag)s || id), 1, 24) || lpad(to_hex(id), 16, '0'), id, now() FROM created
        RETURNING user_id, key
        """,
        {"tag": tag, "count": count, "role": role},
    )
    analyze("accounts_user", "authtoken_token")
    return sorted((User(id=user_id, token=key) for user_id, key in rows), key=lambda u: u.id)


# --- cars ------------------------------------------------------------------------------------------


def cars(count: int) -> list[int]:
    tag = _tag("car")
    rows = _rows(
        """
        INSERT INTO reservations_car (organisation_id, dealer_id, make, model, label, status, created_at, updated_at)
        SELECT %(organisation)s, 900, 'Bench', 'Model ' || (n %% 7), %(tag)s || ' #' || n, 'ACTIVE', now(), now()
        FROM generate_series(1, %(count)s) AS n ORDER BY n
        RETURNING id
        """,
        {"tag": tag, "count": count, "organisation": organisation()},
    )
    analyze("reservations_car")
    return sorted(car_id for (car_id,) in rows)


# --- events ----------------------------------------------------------------------------------------


def event(seats: int) -> Event:
    """An event a month ahead with plain seats S1…Sn, created by the service (the seats are one
    INSERT); holds on it last 60 minutes, so nothing the bench holds expires during a run."""
    now = timezone.now()
    created = events_events.event_create(
        name=f"Bench {_tag('event')}",
        event_date=now + timedelta(days=30),
        location="bench",
        organisation_id=organisation(),
        total_seats=seats,
        hold_minutes=60,
        now=now,
    )
    analyze("events_event", "events_seat")
    return created


def sell(event: Event, *, fraction: float, buyers: list[User], seed: int = 1) -> int:
    """Book ``fraction`` of the event's seats, chosen at random, as confirmed holds of 50 seats, and
    move the event's counter to match. Returns the number of seats sold."""
    seat_ids = list(event.seats.values_list("pk", flat=True))
    random.Random(seed).shuffle(seat_ids)
    sold = seat_ids[: int(len(seat_ids) * fraction)]
    now = timezone.now()
    groups, claims = [], []
    for number, start in enumerate(range(0, len(sold), rules.MAX_SEATS_PER_HOLD)):
        chunk = sold[start : start + rules.MAX_SEATS_PER_HOLD]
        group = SeatHoldGroup(
            event=event,
            user_id=buyers[number % len(buyers)].id,
            state=SeatHoldGroup.State.CONFIRMED,
            booking_group_id=uuid.uuid4(),
            seat_count=len(chunk),
            expires_at=now + timedelta(minutes=event.hold_minutes),
            created_at=now,
            updated_at=now,
            confirmed_at=now,
        )
        groups.append(group)
        claims += [
            SeatClaim(group=group, event=event, seat_id=seat_id, state=group.state, expires_at=group.expires_at)
            for seat_id in chunk
        ]
    with transaction.atomic():
        SeatHoldGroup.objects.bulk_create(groups, batch_size=1000)
        SeatClaim.objects.bulk_create(claims, batch_size=5000)
        Event.objects.filter(pk=event.pk).update(confirmed_seats=len(sold))
    analyze("events_seatholdgroup", "events_seatclaim")
    return len(sold)


# --- slots -----------------------------------------------------------------------------------------


def slots(hosts: list[User], *, per_host: int, capacity: int = 1, start: datetime | None = None) -> list[list[int]]:
    """``per_host`` slots for each host, hour after hour from ``start`` (default: tomorrow), 30 minutes
    long, so no host's slots overlap. Returns each host's slot ids in time order."""
    start = start or timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    rows = _rows(
        """
        INSERT INTO slots_slot (host_id, organisation_id, kind, title, specialization, start, "end", capacity, booked,
                                status, created_at, updated_at)
        SELECT host_id, %(organisation)s, 'PUBLISHED', 'Bench slot', 'bench', %(start)s + (n - 1) * interval '1 hour',
               %(start)s + (n - 1) * interval '1 hour' + interval '30 minutes', %(capacity)s, 0, 'AVAILABLE',
               now(), now()
        FROM unnest(%(hosts)s::bigint[]) AS host_id, generate_series(1, %(per_host)s) AS n
        ORDER BY host_id, n
        RETURNING id, host_id
        """,
        {
            "start": start,
            "capacity": capacity,
            "hosts": [h.id for h in hosts],
            "per_host": per_host,
            "organisation": organisation(),
        },
    )
    analyze("slots_slot")
    by_host: dict[int, list[int]] = {h.id: [] for h in hosts}
    for slot_id, host_id in sorted(rows):
        by_host[host_id].append(slot_id)
    return [by_host[h.id] for h in hosts]


def busy_host(*, days: int) -> tuple[User, date]:
    """A host working every day 08:00 to 20:00 in Europe/Berlin (30 and 60-minute appointments, a 10-minute
    buffer), with a 30-minute published slot every other hour of the ``days`` from tomorrow (and a withdrawn
    one in each hour between), half of them booked: the free-time search's busy month. Returns the host and
    the first day."""
    [host] = users(1, role="HOST")
    document: AvailabilityDocument = {
        "timeZone": "Europe/Berlin",
        "weekly": [{"weekday": day, "start": "08:00", "end": "20:00"} for day in range(7)],
        "overrides": [],
        "durations": [30, 60],
        "minimumNoticeMinutes": 0,
        "bufferMinutes": 10,
    }
    account = Account.objects.get(pk=host.id)
    hours = availability_clean(document)
    # The host is a member of the bench's organisation, where their hours go (docs/decisions/0025-organisations.md).
    Membership.objects.create(user=account, organisation_id=organisation(), role=Role.STAFF, created_at=timezone.now())
    slots_slots.availability_set(host=account, fields=hours, actor=account, now=timezone.now())
    first = timezone.now().astimezone(ZoneInfo("Europe/Berlin")).date() + timedelta(days=1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=ZoneInfo("Europe/Berlin"))
    [slot_ids] = slots([host], per_host=days * 24, start=start)
    guests = users(-(-len(slot_ids) // 4 // 5))  # five bookings each, the most a guest may have
    _rows(
        """
        WITH numbered AS (SELECT id, n FROM unnest(%(slots)s::bigint[]) WITH ORDINALITY AS b(id, n)),
        withdrawn AS (
            UPDATE slots_slot SET status = 'CANCELLED' WHERE id IN (SELECT id FROM numbered WHERE n %% 2 = 0)),
        booking AS (
            SELECT s.id AS slot_id, s.start, s."end",
                   (%(guests)s::bigint[])[1 + (row_number() OVER (ORDER BY s.id) - 1) %% %(count)s] AS guest_id
            FROM numbered JOIN slots_slot s ON s.id = numbered.id WHERE n %% 4 = 1),
        booked AS (
            INSERT INTO slots_slotbooking (slot_id, guest_id, start, "end", seats, status, reason, metadata,
                                           idempotency_key, created_at, updated_at)
            SELECT slot_id, guest_id, start, "end", 1, 'CONFIRMED', '', '{}', '', now(), now() FROM booking
            RETURNING slot_id)
        UPDATE slots_slot SET booked = 1 WHERE id IN (SELECT slot_id FROM booked)
        """,
        {"slots": slot_ids, "guests": [g.id for g in guests], "count": len(guests)},
    )
    analyze("slots_slotbooking")
    return host, first


def withdraw_slots(slot_ids: list[int]) -> None:
    """Take a write scenario's slots off the listing once it is measured, as their host would: the
    bookings cancelled (seats freed), the slots CANCELLED. The slot listing then always reads the same
    50,000 slots."""
    params = {"ids": slot_ids, "reason": "bench: withdrawn after its scenario"}
    with transaction.atomic():
        _rows(
            "UPDATE slots_slotbooking SET status = 'CANCELLED', reason = %(reason)s, updated_at = now() "
            "WHERE slot_id = ANY(%(ids)s) AND status IN ('PENDING', 'CONFIRMED')",
            params,
        )
        _rows(
            "UPDATE slots_slot SET status = 'CANCELLED', booked = 0, updated_at = now() WHERE id = ANY(%(ids)s)", params
        )


# --- the expiry sweep's backlog -----------------------------------------------------------------------


def overdue_holds(count: int, *, buyers: list[User]) -> dict[str, int]:
    """``count`` held claims whose expiry passed an hour ago, a third in each domain: car holds (one per
    car), seat holds of two seats on one event, and PENDING slot bookings (five hosts with slots of
    10,000 seats, one host's hours after another's; each guest holds one seat at each host, so five, the
    most a guest may hold, never two at once)."""
    per_domain = {"reservations": count // 3, "events": count // 3}
    per_domain["slots"] = count - sum(per_domain.values())
    now = timezone.now()
    times = {"created": now - OVERDUE_BY - timedelta(minutes=15), "expires": now - OVERDUE_BY}
    buyer_ids = [b.id for b in buyers]
    with transaction.atomic():
        _overdue_car_holds(cars(per_domain["reservations"]), buyer_ids=buyer_ids, **times)
        _overdue_seat_holds(event(2 * per_domain["events"]), buyer_ids=buyer_ids, **times)
        _overdue_slot_holds(per_domain["slots"], **times)
    return per_domain


def _overdue_car_holds(car_ids: list[int], *, buyer_ids: list[int], created: datetime, expires: datetime) -> None:
    _rows(
        """
        INSERT INTO reservations_reservation (car_id, buyer_id, state, expires_at, idempotency_key, created_at,
                                              updated_at)
        SELECT car_id, (%(buyers)s::bigint[])[1 + (n - 1) %% %(buyer_count)s], 'HELD', %(expires)s, '',
               %(created)s, %(created)s
        FROM unnest(%(cars)s::bigint[]) WITH ORDINALITY AS c(car_id, n)
        """,
        {"cars": car_ids, "buyers": buyer_ids, "buyer_count": len(buyer_ids), "expires": expires, "created": created},
    )


def _overdue_seat_holds(event: Event, *, buyer_ids: list[int], created: datetime, expires: datetime) -> None:
    """Holds of two seats each: seats 2g and 2g+1 (in id order) form group g, whose id is derived from
    g (an md5 is a valid UUID), so the claims find their group without a join."""
    params = {
        "event": event.pk,
        "tag": _tag("hold"),
        "groups": event.total_seats // 2,
        "buyers": buyer_ids,
        "buyer_count": len(buyer_ids),
        "expires": expires,
        "created": created,
    }
    _rows(
        """
        INSERT INTO events_seatholdgroup (id, event_id, user_id, state, seat_count, expires_at, idempotency_key,
                                          created_at, updated_at)
        SELECT md5(%(tag)s || g)::uuid, %(event)s, (%(buyers)s::bigint[])[1 + g %% %(buyer_count)s], 'HELD', 2,
               %(expires)s, '', %(created)s, %(created)s
        FROM generate_series(0, %(groups)s - 1) AS g
        """,
        params,
    )
    _rows(
        """
        INSERT INTO events_seatclaim (group_id, event_id, seat_id, state, expires_at)
        SELECT md5(%(tag)s || g)::uuid, %(event)s, id, 'HELD', %(expires)s
        FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 2 AS g FROM events_seat WHERE event_id = %(event)s) s
        WHERE g < %(groups)s
        """,
        params,
    )


def _overdue_slot_holds(count: int, *, created: datetime, expires: datetime) -> None:
    hosts = users(5, role="HOST")
    guests = users(-(-count // len(hosts)))
    per_slot = 10_000
    per_host = -(-len(guests) // per_slot)
    # One host's slots after another's: a guest's holds with the five hosts never overlap in time (a guest
    # is never in two places at once, slotbooking_guest_no_overlap).
    first = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    slot_ids = [
        slots([host], per_host=per_host, capacity=per_slot, start=first + timedelta(hours=n * per_host))[0]
        for n, host in enumerate(hosts)
    ]
    _rows(
        """
        WITH booking AS (
            SELECT g.id AS guest_id, (%(slots)s::bigint[])[h.n][1 + (g.n - 1) / %(per_slot)s] AS slot_id
            FROM unnest(%(guests)s::bigint[]) WITH ORDINALITY AS g(id, n),
                 generate_series(1, %(hosts)s) AS h(n)
            ORDER BY h.n, g.n LIMIT %(count)s),
        booked AS (
            INSERT INTO slots_slotbooking (slot_id, guest_id, start, "end", seats, status, expires_at, reason,
                                           metadata, idempotency_key, created_at, updated_at)
            SELECT b.slot_id, b.guest_id, s.start, s."end", 1, 'PENDING', %(expires)s, '', '{}', '', %(created)s,
                   %(created)s
            FROM booking b JOIN slots_slot s ON s.id = b.slot_id
            RETURNING slot_id)
        UPDATE slots_slot SET booked = s.n FROM (SELECT slot_id, count(*) AS n FROM booked GROUP BY slot_id) s
        WHERE slots_slot.id = s.slot_id
        """,
        {
            "slots": slot_ids,
            "per_slot": per_slot,
            "guests": [g.id for g in guests],
            "hosts": len(hosts),
            "count": count,
            "expires": expires,
            "created": created,
        },
    )


# --- the pgbench ceiling -----------------------------------------------------------------------------

CEILING_ROWS = 100_000


def ceiling_tables() -> None:
    """Two tables of the shape of a hold: a resource row to lock, a claim row referencing it. One statement
    at a time: they are bound server side, and such a statement is one command."""
    for statement in (
        "CREATE TABLE bench_ceiling_resource (id bigint PRIMARY KEY, label text NOT NULL)",
        """CREATE TABLE bench_ceiling_claim (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            resource_id bigint NOT NULL REFERENCES bench_ceiling_resource (id),
            created_at timestamptz NOT NULL)""",
        "CREATE INDEX ON bench_ceiling_claim (resource_id)",
    ):
        _rows(statement, {})
    _rows(
        "INSERT INTO bench_ceiling_resource SELECT n, 'resource ' || n FROM generate_series(1, %(rows)s) AS n",
        {"rows": CEILING_ROWS},
    )
