"""The data behind the hot-reads figures of docs/decisions/0008-reads.md, built with bulk SQL.

    DATABASE_URL=postgres://... .venv/bin/python bench/reads_data.py

Adds (left in the database, like any other data): two events of 20,000 seats (4 sections x 50 rows x
100), one 0 % and one 90 % sold (18,000 seats as confirmed bookings of 4), each with 300 live held seats
and 120 overdue ones (not yet flipped to EXPIRED); 50 hosts with 1,000 hourly future slots each
(capacity 5), with 5,000 confirmed, 500 live PENDING and 500 overdue PENDING bookings; a guest with a
token. Prints the ids, the token and the wrk command lines to run against `make serve`. The live holds
last two hours: rerun it for a later sitting.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "booking_site.settings")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from booking_site.accounts.models import User  # noqa: E402
from events import services  # noqa: E402

LAYOUT = services.SeatLayout(sections=("A", "B", "C", "D"), rows=50, seats_per_row=100)  # 20,000 seats

CLAIMS = """
    WITH picked AS (
        SELECT id, (ROW_NUMBER() OVER (ORDER BY id) - 1) / %(size)s AS grp FROM (
            SELECT s.id FROM events_seat s
            WHERE s.event_id = %(event)s AND NOT EXISTS (
                SELECT 1 FROM events_seatclaim c WHERE c.seat_id = s.id AND c.state IN ('HELD', 'CONFIRMED'))
            ORDER BY random() LIMIT %(seats)s) free),
    grouped AS (SELECT grp, gen_random_uuid() AS gid, COUNT(*) AS n FROM picked GROUP BY grp),
    groups AS (
        INSERT INTO events_seatholdgroup (id, booking_group_id, state, seat_count, expires_at, request_id,
                                          created_at, updated_at, confirmed_at, event_id, user_id)
        SELECT gid, CASE WHEN %(state)s = 'CONFIRMED' THEN gen_random_uuid() END, %(state)s, n, %(expires)s, '',
               %(created)s, %(created)s, CASE WHEN %(state)s = 'CONFIRMED' THEN %(created)s::timestamptz END,
               %(event)s, (%(users)s::bigint[])[1 + grp %% cardinality(%(users)s::bigint[])]
        FROM grouped RETURNING id)
    INSERT INTO events_seatclaim (state, expires_at, event_id, seat_id, group_id)
    SELECT %(state)s, %(expires)s, %(event)s, picked.id, grouped.gid FROM picked JOIN grouped USING (grp)
"""

SLOTS = """
    INSERT INTO slots_slot (title, specialization, start, "end", capacity, booked, status, created_at, updated_at,
                            host_id)
    SELECT 'Consultation', (ARRAY['cardiology', 'dermatology', 'dentist', 'gp'])[1 + h.i %% 4],
           date_trunc('hour', %(now)s::timestamptz) + (n + 2) * interval '1 hour',
           date_trunc('hour', %(now)s::timestamptz) + (n + 2) * interval '1 hour' + interval '45 minutes',
           5, 0, 'AVAILABLE', %(now)s, %(now)s, h.id
    FROM unnest(%(hosts)s::bigint[]) WITH ORDINALITY AS h(id, i), generate_series(0, 999) n
"""

BOOKINGS = """
    WITH picked AS (
        SELECT id FROM slots_slot WHERE host_id = ANY(%(hosts)s) AND booked < capacity ORDER BY random() LIMIT %(n)s),
    booked AS (
        INSERT INTO slots_slotbooking (seats, status, expires_at, reason, metadata, request_id, created_at,
                                       updated_at, guest_id, slot_id)
        SELECT 1, %(status)s, %(expires)s, '', '{}', '', %(now)s, %(now)s,
               (%(users)s::bigint[])[1 + id %% cardinality(%(users)s::bigint[])], id
        FROM picked RETURNING slot_id)
    UPDATE slots_slot SET booked = booked + 1 WHERE id IN (SELECT slot_id FROM booked)
"""


def users(prefix: str, count: int, **fields) -> list[int]:
    return [
        User.objects.get_or_create(username=f"{prefix}-{i}", defaults={"email": f"{prefix}-{i}@example.com", **fields})[
            0
        ].pk
        for i in range(count)
    ]


def main() -> None:
    now = timezone.now()
    guest = User.objects.get_or_create(username="reads-bench", defaults={"email": "reads-bench@example.com"})[0]
    token = Token.objects.get_or_create(user=guest)[0].key
    guests = users("reads-guest", 200)
    hosts = users("reads-host", 50, roles=["HOST"])
    with transaction.atomic(), connection.cursor() as cursor:
        events = []
        for sold in (0, 18_000):
            event = services.event_create(
                name=f"Reads bench {sold // 200} %",
                event_date=now + timedelta(days=30),
                location="bench",
                total_seats=None,
                layout=LAYOUT,
                now=now,
            )
            claims = [
                ("CONFIRMED", sold, 4, now + timedelta(minutes=5), now - timedelta(days=1)),
                ("HELD", 300, 3, now + timedelta(hours=2), now),
                ("HELD", 120, 3, now - timedelta(minutes=1), now - timedelta(minutes=6)),  # overdue
            ]
            for state, seats, size, expires, created in claims:
                if seats:
                    params = {"event": event.pk, "state": state, "seats": seats, "size": size}
                    cursor.execute(CLAIMS, {**params, "expires": expires, "created": created, "users": guests})
            cursor.execute("UPDATE events_event SET confirmed_seats = %s WHERE id = %s", [sold, event.pk])
            events.append(event.pk)
        cursor.execute(SLOTS, {"now": now, "hosts": hosts})
        for status, count, expires in (
            ("CONFIRMED", 5000, None),
            ("PENDING", 500, now + timedelta(hours=2)),
            ("PENDING", 500, now - timedelta(minutes=1)),  # overdue
        ):
            params = {"hosts": hosts, "n": count, "status": status, "expires": expires}
            cursor.execute(BOOKINGS, {**params, "now": now, "users": guests})
    with connection.cursor() as cursor:  # what autovacuum would do on a live system after a bulk fill
        cursor.execute("ANALYZE")
    print(f"events {events[0]} (0 % sold) and {events[1]} (90 % sold), 50,000 slots, token {token}\n")
    wrk = f"wrk -c 50 -t 2 -d 10s --timeout 10s --latency -H 'Authorization: Token {token}'"
    for path in (f"events/{events[0]}", f"events/{events[1]}", f"events/{events[1]}/seats", "slots", "users/me"):
        print(f"{wrk} http://127.0.0.1:$PORT/api/{path}")


if __name__ == "__main__":
    main()
