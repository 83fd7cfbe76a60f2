"""The admin's CSV exports (web/exports.py, docs/decisions/0019-calendar-and-exports.md)."""

import csv
import io
import time
import tracemalloc
from datetime import timedelta

import psutil
import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from psycopg import sql

from core.organisations.roles import Role as OrganisationRole
from events.models import SeatClaim, SeatHoldGroup
from reservations.models import Reservation
from tests.events.factories import make_event, write_hold
from tests.factories import UserFactory, house, member
from tests.lengths import short_and_long
from tests.reservations.factories import ReservationFactory
from tests.slots.factories import HostFactory, SlotBookingFactory, SlotFactory
from web.exports import cell


@pytest.fixture
def operator(staff) -> Client:
    browser = Client()
    browser.force_login(staff)
    return browser


def _rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename=")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1 555", "'+1 555"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tindented", "'\tindented"),
        ("\rreturn", "'\rreturn"),
        ("A-3-12", "A-3-12"),
        ("plain text", "plain text"),
        (-5, -5),  # a number stays a number
        (None, ""),
    ],
)
def test_a_value_a_spreadsheet_would_evaluate_is_written_as_text(value, written):
    assert cell(value) == written


def test_the_door_list_has_the_lists_rows_with_seat_codes_and_buyers(operator):
    event, other = make_event(layout=(["A"], 2, 3)), make_event()
    buyer = UserFactory(email="ann@example.com", name="=cmd|' /C calc'!A0")
    booked = write_hold(event, ["A-2-1", "A-1-3"], user=buyer, state="CONFIRMED")
    write_hold(event, ["A-1-1"], state="HELD")  # not a booking: filtered out by the state
    write_hold(other, ["S1"], state="CONFIRMED")  # another event

    page = operator.get(f"/admin/events/seatholdgroup/?event__id__exact={event.pk}&state=CONFIRMED")
    link = f"/admin/events/seatholdgroup/export.csv?event__id__exact={event.pk}&amp;state=CONFIRMED"
    assert link.encode() in page.content
    rows = _rows(operator.get(link.replace("&amp;", "&")))

    assert len(rows) == 1
    assert rows[0]["booking"] == str(booked.booking_group_id)
    assert rows[0]["seat codes"] == "A-1-3 A-2-1"
    assert (rows[0]["buyer email"], rows[0]["buyer name"]) == ("ann@example.com", "'=cmd|' /C calc'!A0")
    assert rows[0]["state"] == "CONFIRMED"


def test_the_export_follows_the_lists_search_on_every_page(operator, settings):
    guest = UserFactory(email="searched@example.com")
    bookings = [SlotBookingFactory(guest=guest) for _ in range(3)]
    SlotBookingFactory()

    rows = _rows(operator.get("/admin/slots/slotbooking/export.csv?q=searched%40example.com&o=1"))

    assert [int(row["booking"]) for row in rows] == sorted(b.pk for b in bookings)  # the list's order (o=1)
    assert {row["guest email"] for row in rows} == {"searched@example.com"}


def test_the_slot_bookings_of_a_day_and_of_a_host(operator):
    host = HostFactory()
    tomorrow = (timezone.localtime() + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    on_the_day = SlotBookingFactory(slot=SlotFactory(host=host, start=tomorrow, end=tomorrow + timedelta(hours=1)))
    later = tomorrow + timedelta(days=2)
    SlotBookingFactory(slot=SlotFactory(host=host, start=later, end=later + timedelta(hours=1)))
    SlotBookingFactory(slot=SlotFactory(start=tomorrow + timedelta(hours=3), end=tomorrow + timedelta(hours=4)))

    day = operator.get(f"/admin/slots/slotbooking/?day={tomorrow.date().isoformat()}&slot__host__id__exact={host.pk}")
    assert day.status_code == 200
    rows = _rows(
        operator.get(
            f"/admin/slots/slotbooking/export.csv?day={tomorrow.date().isoformat()}&slot__host__id__exact={host.pk}"
        )
    )

    assert [int(row["booking"]) for row in rows] == [on_the_day.pk]
    assert rows[0]["host email"] == host.email


@pytest.mark.parametrize(
    ("model", "header"),
    [
        ("reservations/reservation", "reservation"),
        ("events/waitlistentry", "entry"),
        ("webhooks/webhookdelivery", "delivery"),
        ("slots/slotbooking", "booking"),
        ("events/seatholdgroup", "booking"),
    ],
)
def test_each_list_offers_its_export(operator, model, header):
    page = operator.get(f"/admin/{model}/")

    assert b'class="export-csv"' in page.content
    response = operator.get(f"/admin/{model}/export.csv")
    assert next(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))[0] == header


def test_the_action_exports_the_ticked_rows(operator):
    ticked, _ = ReservationFactory(), ReservationFactory()

    response = operator.post(
        "/admin/reservations/reservation/", {"action": "export_csv", "_selected_action": [ticked.pk]}
    )

    assert [int(row["reservation"]) for row in _rows(response)] == [ticked.pk]


def test_only_the_operators_of_its_organisation_export(db):
    ReservationFactory()
    buyer, clerk = Client(), Client()
    buyer.force_login(UserFactory())
    clerk.force_login(UserFactory(is_staff=True))  # staff, but a member of no organisation

    assert buyer.get("/admin/reservations/reservation/export.csv").status_code == 302  # to the admin's login
    assert clerk.get("/admin/reservations/reservation/export.csv").status_code == 403

    clerk_user = UserFactory(is_staff=True)
    member(clerk_user, house(), OrganisationRole.STAFF)  # the reservations' organisation (issue 22)
    clerk.force_login(clerk_user)
    assert len(_rows(clerk.get("/admin/reservations/reservation/export.csv"))) == Reservation.objects.count()


def test_a_bad_filter_goes_back_to_the_list(operator):
    response = operator.get("/admin/slots/slotbooking/export.csv?day=not-a-day")

    assert response.status_code == 302
    assert response["Location"] == "/admin/slots/slotbooking/?e=1"


# --- 100,000 rows in constant memory ---------------------------------------------------------------


def _door_list_of(seats: int) -> int:
    """An event of ``seats`` seats, each booked alone by one buyer (a hold group per seat), in one
    statement; returns the event's id."""
    event, buyer = make_event(total_seats=seats), UserFactory()
    query = sql.SQL(
        """
        WITH pairs AS MATERIALIZED (
            SELECT id AS seat_id, gen_random_uuid() AS group_id FROM {seat} WHERE event_id = %(event)s),
        groups AS (
            INSERT INTO {group} (id, booking_group_id, event_id, user_id, state, seat_count, expires_at,
                                 idempotency_key, created_at, updated_at, confirmed_at)
            SELECT group_id, gen_random_uuid(), %(event)s, %(buyer)s, 'CONFIRMED', 1, %(expires)s, '',
                   %(now)s, %(now)s, %(now)s
            FROM pairs)
        INSERT INTO {claim} (group_id, event_id, seat_id, state, expires_at)
        SELECT group_id, %(event)s, seat_id, 'CONFIRMED', %(expires)s FROM pairs
        """
    ).format(
        seat=sql.Identifier(event.seats.model._meta.db_table),
        group=sql.Identifier(SeatHoldGroup._meta.db_table),
        claim=sql.Identifier(SeatClaim._meta.db_table),
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(query, {"event": event.pk, "buyer": buyer.pk, "now": now, "expires": now + timedelta(minutes=5)})
        # What autovacuum does within a minute of a bulk load: without it the planner takes the new tables
        # for empty and reads every claim for each group's seat codes.
        cursor.execute(
            sql.SQL("ANALYZE {}, {}").format(
                sql.Identifier(SeatHoldGroup._meta.db_table), sql.Identifier(SeatClaim._meta.db_table)
            )
        )
    return event.pk


def _export_measured(browser: Client, event_id: int) -> tuple[int, int, int, float]:
    """Rows, the peak of Python's allocations (bytes) and the growth of the process's resident memory
    (bytes) while the door list is requested and read to its end, and the seconds it took."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    started = time.monotonic()
    tracemalloc.start()
    try:
        response = browser.get(f"/admin/events/seatholdgroup/export.csv?event__id__exact={event_id}")
        lines = sum(chunk.count(b"\n") for chunk in response.streaming_content)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return lines - 1, peak, process.memory_info().rss - rss_before, time.monotonic() - started


@pytest.mark.slow
@short_and_long("sizes", (2_000, 20_000), (10_000, 100_000))
def test_100000_rows_export_in_constant_memory(operator, settings, sizes):
    # Several chunks in each export, the short run's too: memory that grew with the rows would show.
    settings.EXPORT_CHUNK_SIZE = sizes[0] // 10
    small, large = (_door_list_of(rows) for rows in sizes)
    _export_measured(operator, small)  # the first export imports and compiles what every later one reuses

    rows_small, peak_small, _, _ = _export_measured(operator, small)
    rows_large, peak_large, rss_growth, seconds = _export_measured(operator, large)

    print(
        f"\n{rows_small} rows: peak {peak_small / 2**20:.1f} MiB; {rows_large} rows: "
        f"peak {peak_large / 2**20:.1f} MiB, RSS growth {rss_growth / 2**20:.1f} MiB, {seconds:.1f} s"
    )
    assert (rows_small, rows_large) == sizes
    assert peak_large < 16 * 2**20  # the whole file is ~17 MB: it never is in memory at once
    assert peak_large < 1.5 * peak_small  # ten times the rows, the same memory: one chunk at a time
    assert rss_growth < 32 * 2**20
