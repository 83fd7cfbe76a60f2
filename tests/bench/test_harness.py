"""The pure pieces of ``make bench``: the arithmetic, the clients' report line, the tables, the
profile's grouping. No timing, no server."""

import math

import pytest

from bench import profile, report
from bench.burst import raw_request
from bench.load import Ticket, parse_report, to_load
from bench.scenarios import Measurement
from bench.stats import median, percentile


def test_percentile_is_nearest_rank():
    samples = list(range(1, 101))

    assert [percentile(samples, p) for p in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7], 99) == 7
    assert math.isnan(percentile([], 50))


def test_median_skips_runs_that_measured_nothing():
    assert median([3, None, 1, 2]) == 2
    assert median([None, float("nan")]) is None


def test_a_ticket_is_one_tab_separated_line_that_the_burst_client_turns_into_a_request():
    line = Ticket("POST", "/api/reservations", "abc", {"carId": 7}).line()

    assert line == 'POST\t/api/reservations\tabc\t{"carId": 7}'
    request = raw_request(line, "127.0.0.1:18400").decode()
    assert request.startswith("POST /api/reservations HTTP/1.1\r\nHost: 127.0.0.1:18400\r\n")
    assert "Authorization: Token abc\r\n" in request
    assert request.endswith('Content-Length: 12\r\nConnection: close\r\n\r\n{"carId": 7}')


def test_a_ticket_without_token_sends_no_authorization():
    request = raw_request(Ticket("GET", "/events/1", "-").line(), "127.0.0.1:4000").decode()

    assert "Authorization" not in request


def test_the_report_line_is_found_among_wrks_own_output():
    output = (
        "Running 5s test @ http://127.0.0.1:18400\n  2 threads and 50 connections\n"
        'BENCH {"requests": 1000, "duration_us": 5000000, "p50_us": 1500, "p95_us": 9000, "p99_us": 12000, '
        '"max_us": 20000, "statuses": {"201": 998, "409": 2}, "socket_errors": 0}\n'
    )

    load = to_load(parse_report(output), client_cpu_s=0.2)

    assert (load.rps, load.p50_ms, load.p99_ms) == (200, 1.5, 12)
    assert load.statuses == {201: 998, 409: 2}


def test_the_table_shows_medians_and_adds_up_the_statuses_of_all_runs():
    runs = [
        Measurement("car-hold", "write", rps=rps, p99_ms=p99, statuses={201: 10}, cpu_ms={"server": 4.0})
        for rps, p99 in ((100, 30), (300, 10), (200, 20))
    ]
    for m in runs:
        m.extra["ceiling_fraction"] = m.rps / 1000

    (summary,) = report.summarize(runs)
    text = report.table([summary])

    assert (summary.rps, summary.p99_ms, summary.ceiling_fraction) == (200, 20, 0.2)
    assert summary.statuses == {201: 30}
    row = text.splitlines()[2]
    assert row.split()[:2] == ["car-hold", "200"]
    assert "201:30" in row and "20%" in row


def test_the_on_sale_has_its_own_table_and_stays_out_of_the_load_table():
    runs = [
        Measurement(
            "onsale",
            "onsale",
            rps=120,
            p99_ms=900,
            statuses={201: 2500, 200: 9000, 409: 1},
            extra={"buyers": 2000, "sold": 500, "rate_per_min": 3000, "sold_out_s": 30.4, "last_buyer_wait_s": w},
        )
        for w in (27.9, 25.0, 30.0)
    ]

    text = report.table(report.summarize(runs))

    assert text.splitlines()[0].split()[:2] == ["on-sale", "buyers"]
    row = text.splitlines()[2].split()
    assert row[:4] == ["onsale", "2,000", "500", "3,000"] and "27.9" in row


def test_profile_samples_are_grouped_by_the_library_of_their_frames():
    raw = (
        'process 1:"gunicorn";handle (gunicorn/workers/sync.py:1);execute (django/db/models/sql/compiler.py:2);'
        "wait (psycopg/connection.py:3) 3\n"
        'process 1:"gunicorn";handle (gunicorn/workers/sync.py:1);dispatch (rest_framework/views.py:4) 1\n'
    )

    summary = profile.summarize(profile.parse_raw(raw))

    assert "4 samples" in summary
    assert "| psycopg | 75% | 75% |" in summary
    assert "| Django ORM | 0% | 75% |" in summary
    assert profile.group_of("deepcopy (copy.py:151)") == "Python stdlib"
    assert profile.group_of("reservation_hold (reservations/services.py:64)") == "booking_site code"


def test_only_picks_scenarios_by_pattern_and_brings_the_ceiling_along_with_writes():
    from bench.__main__ import SCENARIO_NAMES, select
    from bench.scenarios import SCENARIOS

    assert [s.name for s in SCENARIOS] == SCENARIO_NAMES
    assert [s.name for s in select(["hot-*"], SCENARIOS)] == ["ceiling", "hot-car", "hot-seat", "hot-slot"]
    assert [s.name for s in select(["users-me"], SCENARIOS)] == ["users-me"]
    with pytest.raises(SystemExit, match="no scenario matches"):
        select(["nope"], SCENARIOS)


@pytest.mark.django_db
def test_bench_webhook_registers_an_active_endpoint_the_server_kicks_for(capsys, settings):
    from bench.__main__ import parse_args, register_webhook
    from web.webhooks.models import WebhookEndpoint

    assert parse_args(["--webhook"]).webhook and not parse_args([]).webhook
    register_webhook()  # it allows private URLs: the settings fixture puts that back

    assert WebhookEndpoint.objects.get().active
    assert "writes kick delivery runs" in capsys.readouterr().out
