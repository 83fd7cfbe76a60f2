"""The scenarios. Each prepares its own data (untimed), measures once, and returns a ``Measurement``:
throughput and latency from the load client, CPU per request of the server's process tree, of
PostgreSQL and of the client, and the checks it failed.

    writes   spread holds, one resource per request, with and without Idempotency-Key (wrk)
    hot      200 clients released at once on one resource, then the database is checked (bench.burst)
    reads    event counts, seat map, slot listing, users/me, a busy host's free times (wrk)
    sweep    the expiry job over a backlog of overdue holds (manage.py expire_holds)
    onsale   2,000 buyers through the admission queue of a 500-seat event, each holding and confirming (bench.onsale)
    scale    spread car holds and event counts through HAProxy in front of 1, 2, 4 web processes
    ceiling  pgbench replaying the minimal hold transaction
"""

from __future__ import annotations

import dataclasses
import random
import re
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Protocol

from bench import data, onsale
from bench.cpu import Meter
from bench.load import Load, Ticket, run_burst, run_measured, run_wrk, write_tickets
from bench.server import ROOT, Cluster, Server
from bench.stats import percentile
from events.models import SeatClaim, SeatHoldGroup
from reservations.models import Reservation
from slots.models import Slot, SlotBooking

HOT_CLIENTS = 200
SLOTS_PER_GUEST = 5  # SLOTS_MAX_ACTIVE_BOOKINGS_PER_GUEST: each guest books once at each of five hosts
LISTED_SLOTS = 50_000
MAP_SEATS = 20_000
SWEEP_SIZES = (10_000, 100_000)
SEAT_MAP_CONNECTIONS = 4
LATENCY_CONNECTIONS = 2  # one per worker: each request is served at once, so p99 is its own time, no queue
FREE_TIME_DAYS = 31  # the free-time search over a month of a busy host


@dataclass
class Measurement:
    scenario: str
    kind: str
    requests: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    cpu_ms: dict[str, float | None] = field(default_factory=dict)  # per request: server, postgres, client
    errors: int = 0  # answers other than the expected ones
    failures: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Serving(Protocol):
    """The system under load as a scenario sees it: ours (``bench.server.Server``) or a seed the operator
    runs (``bench.seeds.Seed``)."""

    @property
    def url(self) -> str: ...

    @property
    def address(self) -> str: ...

    def pids(self) -> list[int]: ...


@dataclass
class Bench:
    """What every scenario works with: the running server, the meters, the settings of the run, and
    the data created once for all runs."""

    server: Serving
    meter: Meter
    database_url: str
    workdir: Path
    seconds: float
    connections: int
    max_requests: int
    buyers: list[data.User]
    reads: dict[str, str]  # read scenario -> path
    ceiling_tps: float | None = None
    onsale_rate: int = 3000  # the on-sale's admissions per minute

    def tickets(self, name: str, tickets: list[Ticket]) -> Path:
        return write_tickets(self.workdir / f"{name}.tsv", tickets)

    def token(self, number: int) -> str:
        return self.buyers[number % len(self.buyers)].token


def measured(bench: Bench, scenario: str, kind: str, drive: Callable[[], Load], *, expected: int) -> Measurement:
    """Run ``drive`` between two CPU samples and turn what it measured into a Measurement."""
    started = bench.meter.start()
    load = drive()
    used = bench.meter.stop(started)
    per_request = 1000 / load.requests if load.requests else None
    cpu = {
        name: (seconds * per_request if per_request and seconds is not None else None) for name, seconds in used.items()
    }
    cpu["client"] = load.client_cpu_s * per_request if per_request else None
    return Measurement(
        scenario=scenario,
        kind=kind,
        requests=load.requests,
        rps=load.rps,
        p50_ms=load.p50_ms,
        p95_ms=load.p95_ms,
        p99_ms=load.p99_ms,
        statuses=load.statuses,
        cpu_ms=cpu,
        errors=sum(n for status, n in load.statuses.items() if status != expected) + load.socket_errors,
        extra={
            "ceiling_fraction": load.rps / bench.ceiling_tps if kind != "read" and bench.ceiling_tps else None,
            **load.extra,
        },
    )


def wrk(
    bench: Bench,
    name: str,
    tickets: list[Ticket],
    *,
    once: bool,
    idempotent: bool = False,
    connections: int | None = None,
) -> Callable[[], Load]:
    path = bench.tickets(name, tickets)
    return lambda: run_wrk(
        url=bench.server.url,
        tickets=path,
        connections=connections or bench.connections,
        seconds=bench.seconds,
        once=once,
        limit=len(tickets) if once else bench.max_requests,
        key_prefix=uuid.uuid4().hex if idempotent else None,
    )


# --- spread holds: every request a fresh resource ------------------------------------------------------


def car_holds(bench: Bench, name: str, *, idempotent: bool) -> Measurement:
    tickets = [
        Ticket("POST", "/api/reservations", bench.token(n), {"carId": car_id, "holdDurationMinutes": 60})
        for n, car_id in enumerate(data.cars(bench.max_requests))
    ]
    return measured(bench, name, "write", wrk(bench, name, tickets, once=True, idempotent=idempotent), expected=201)


def seat_holds(bench: Bench, name: str, *, idempotent: bool) -> Measurement:
    """Holds of 1-4 adjacent seats by code, each on seats nobody holds, on one big event."""
    rng = random.Random(7)
    sizes = [rng.randint(1, 4) for _ in range(min(bench.max_requests, 100_000 // 4))]
    event = data.event(sum(sizes))
    tickets, first = [], 1
    for n, size in enumerate(sizes):
        codes = [f"S{number}" for number in range(first, first + size)]
        tickets.append(Ticket("POST", f"/api/events/{event.pk}/seats/reserve", bench.token(n), {"seatCodes": codes}))
        first += size
    return measured(bench, name, "write", wrk(bench, name, tickets, once=True, idempotent=idempotent), expected=201)


def slot_bookings(bench: Bench, name: str, *, idempotent: bool) -> Measurement:
    """Bookings of capacity-1 slots. Ticket n is guest n mod G at host n div G: each guest books once at
    each of five hosts, the most the rules allow, and no two tickets share a slot."""
    guests = data.users(-(-bench.max_requests // SLOTS_PER_GUEST))
    hosts = data.users(SLOTS_PER_GUEST, role="HOST")
    slot_ids = data.slots(hosts, per_host=len(guests))
    tickets = [
        Ticket(
            "POST",
            "/api/bookings",
            guests[n % len(guests)].token,
            {"slotId": slot_ids[n // len(guests)][n % len(guests)]},
        )
        for n in range(len(guests) * len(hosts))
    ]
    try:
        return measured(bench, name, "write", wrk(bench, name, tickets, once=True, idempotent=idempotent), expected=201)
    finally:
        data.withdraw_slots([slot_id for host in slot_ids for slot_id in host])


# --- hot resource: 200 clients at once on one thing; exactly one wins ---------------------------------------


def hot(bench: Bench, name: str, path: str, body: dict, *, active_claims: Callable[[], int]) -> Measurement:
    tickets = bench.tickets(name, [Ticket("POST", path, bench.token(n), body) for n in range(HOT_CLIENTS)])
    result = measured(
        bench, name, "hot", lambda: run_burst(address=bench.server.address, tickets=tickets), expected=201
    )
    result.errors = sum(n for status, n in result.statuses.items() if status not in (201, 409))
    winners, active = result.statuses.get(201, 0), active_claims()
    if (winners, result.statuses.get(409, 0), result.errors, active) != (1, HOT_CLIENTS - 1, 0, 1):
        result.failures.append(
            f"{name}: expected 1 x 201, {HOT_CLIENTS - 1} x 409, nothing else and 1 active claim; got statuses "
            f"{dict(sorted(result.statuses.items()))} and {active} active claim(s) in the database"
        )
    result.extra["active_claims"] = active
    return result


def hot_car(bench: Bench, name: str) -> Measurement:
    (car_id,) = data.cars(1)
    return hot(
        bench,
        name,
        "/api/reservations",
        {"carId": car_id, "holdDurationMinutes": 60},
        active_claims=lambda: Reservation.objects.filter(car_id=car_id).blocking().count(),
    )


def hot_seat(bench: Bench, name: str) -> Measurement:
    event = data.event(10)
    return hot(
        bench,
        name,
        f"/api/events/{event.pk}/seats/reserve",
        {"seatCodes": ["S1"]},
        active_claims=lambda: SeatClaim.objects.filter(
            event=event, seat__code="S1", state__in=SeatHoldGroup.BLOCKING_STATES
        ).count(),
    )


def hot_slot(bench: Bench, name: str) -> Measurement:
    ((slot_id,),) = data.slots(data.users(1, role="HOST"), per_host=1, capacity=1)

    def active_claims() -> int:
        bookings = SlotBooking.objects.filter(slot_id=slot_id).blocking().count()
        booked = Slot.objects.get(pk=slot_id).booked
        return bookings if booked == bookings else -1  # -1: the counter disagrees with the bookings

    try:
        return hot(bench, name, "/api/bookings", {"slotId": slot_id}, active_claims=active_claims)
    finally:
        data.withdraw_slots([slot_id])


# --- reads -------------------------------------------------------------------------------------------------


def read(bench: Bench, name: str) -> Measurement:
    """GETs of one path, each request with the next buyer's token. The 20,000-seat map takes a large
    fraction of a second of server CPU per request: with 50 connections most requests would queue past
    wrk's 10 s timeout, so it runs with SEAT_MAP_CONNECTIONS (still two per worker). A ``-latency``
    scenario reads the same path with LATENCY_CONNECTIONS: the time of one request, not of a queue."""
    path = bench.reads[name.removesuffix("-latency")]
    tickets = [Ticket("GET", path, buyer.token) for buyer in bench.buyers]
    if name.endswith("-latency"):
        connections: int | None = LATENCY_CONNECTIONS
    else:
        connections = SEAT_MAP_CONNECTIONS if name.startswith("seat-map") else None
    return measured(bench, name, "read", wrk(bench, name, tickets, once=False, connections=connections), expected=200)


# --- the expiry sweep ------------------------------------------------------------------------------------------

EXPIRED_LINE = re.compile(r"^(\w+): expired (\d+)$", re.MULTILINE)


def expire_job(bench: Bench):
    """``manage.py expire_holds`` in its own process, as beat's worker would run the job."""
    assert isinstance(bench.server, Server)  # the sweep runs against ours only
    env = {**bench.server.env, "LOG_LEVEL": "WARNING"}
    return run_measured([sys.executable, "manage.py", "expire_holds"], env=env, cwd=ROOT)


def sweep(bench: Bench, name: str, *, holds: int) -> Measurement:
    """Expire ``holds`` overdue holds (a third per domain). The job's start-up (interpreter, Django) is
    measured by a run with nothing due first and taken off its time: holds/s is the job's own rate."""
    idle = expire_job(bench)
    backlog = data.overdue_holds(holds, buyers=bench.buyers)
    data.analyze()
    started = bench.meter.start()
    job = expire_job(bench)
    used = bench.meter.stop(started)
    expired = {domain: int(n) for domain, n in EXPIRED_LINE.findall(job.output)}
    result = Measurement(scenario=name, kind="sweep", requests=holds)
    if job.returncode != 0 or expired != backlog:
        result.failures.append(f"{name}: the job expired {expired} of {backlog} (exit {job.returncode}):\n{job.output}")
    working_s = max(job.wall_s - idle.wall_s, 1e-3)
    postgres = used["postgres"]
    result.cpu_ms = {
        "server": None,
        "postgres": postgres * 1000 / holds if postgres is not None else None,
        "client": job.cpu_s * 1000 / holds,  # the job's own CPU, per hold
    }
    result.extra = {
        "holds_per_s": holds / working_s,
        "wall_s": job.wall_s,
        "startup_s": idle.wall_s,
        "peak_mb": job.max_rss_mb,
        "idle_peak_mb": idle.max_rss_mb,
        "expired": expired,
    }
    return result


# --- the on-sale: a queue admitting buyers in join order ----------------------------------------------------


def on_sale(bench: Bench, name: str) -> Measurement:
    """bench.onsale: every request of the sale (joins, polls, holds, confirms) counts; req/s over the sale."""
    started = bench.meter.start()
    sale = onsale.run(address=bench.server.address, rate=bench.onsale_rate)
    used = bench.meter.stop(started)
    outcome, extra = sale["outcome"], sale["extra"]
    statuses: Counter[int] = Counter()
    for key, n in outcome.statuses.items():  # "hold 409" -> 409
        statuses[int(key.rsplit(" ", 1)[1])] += n
    requests = sum(statuses.values())
    per_request = 1000 / requests if requests else None
    return Measurement(
        scenario=name,
        kind="onsale",
        requests=requests,
        rps=requests / extra["sold_out_s"] if extra["sold_out_s"] else None,
        p50_ms=percentile(outcome.latencies_ms, 50),
        p95_ms=percentile(outcome.latencies_ms, 95),
        p99_ms=percentile(outcome.latencies_ms, 99),
        statuses=dict(statuses),
        cpu_ms={g: (s * per_request if per_request and s is not None else None) for g, s in used.items()},
        errors=sum(n for key, n in outcome.statuses.items() if key not in onsale.EXPECTED),
        failures=sale["failures"],
        extra={k: v for k, v in extra.items() if isinstance(v, int | float)},
    )


# --- the ceiling: PostgreSQL alone, the minimal hold transaction ---------------------------------------------

CEILING_SCRIPT = """\
\\set id random(1, {rows})
BEGIN;
SELECT id FROM bench_ceiling_resource WHERE id = :id FOR NO KEY UPDATE;
INSERT INTO bench_ceiling_claim (resource_id, created_at) VALUES (:id, now());
COMMIT;
"""
TPS_LINE = re.compile(r"^tps = ([\d.]+)", re.MULTILINE)


def pgbench_path() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    import pgserver  # the embedded server's wheel ships pgbench too

    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench")


def ceiling(bench: Bench, name: str) -> Measurement:
    """pgbench at the scenarios' client count; every transaction's latency is logged (``-l``) for the
    percentiles."""
    script = bench.workdir / "ceiling.sql"
    script.write_text(CEILING_SCRIPT.format(rows=data.CEILING_ROWS))
    logs = bench.workdir / f"pgbench-{uuid.uuid4().hex[:8]}"
    seconds = max(1, round(bench.seconds))
    command = [pgbench_path(), "-n", "-f", str(script), "-c", str(bench.connections), "-j", "2", "-T", str(seconds)]
    command += ["-M", "prepared", "-l", f"--log-prefix={logs}", bench.database_url]
    started = bench.meter.start()
    job = run_measured(command, cwd=bench.workdir)
    used = bench.meter.stop(started)
    result = Measurement(scenario=name, kind="ceiling")
    tps = TPS_LINE.search(job.output)
    if job.returncode != 0 or tps is None:
        result.failures.append(f"{name}: pgbench failed (exit {job.returncode}):\n{job.output[-2000:]}")
        return result
    latencies_ms = []
    for log in logs.parent.glob(f"{logs.name}.*"):
        latencies_ms += [int(line.split()[2]) / 1000 for line in log.open()]
        log.unlink()
    result.requests = len(latencies_ms)
    result.rps = float(tps.group(1))
    result.p50_ms, result.p95_ms, result.p99_ms = (percentile(latencies_ms, p) for p in (50, 95, 99))
    result.statuses = {}
    result.extra = {"ceiling_fraction": 1.0}
    per = 1000 / result.requests if result.requests else 0
    postgres = used["postgres"]
    result.cpu_ms = {
        "server": None,
        "postgres": postgres * per if postgres is not None else None,
        "client": job.cpu_s * per,
    }
    bench.ceiling_tps = result.rps
    return result


# --- the data every run shares ---------------------------------------------------------------------------------


def shared_data(*, buyers: int) -> tuple[list[data.User], dict[str, str]]:
    """Created once: the buyers whose tokens the requests carry, the read scenarios' events (20,000
    seats, empty and 90 % sold) and the 50,000 listed slots (50 hosts, 1,000 slots each), the busy host
    of the free-time search, and the ceiling's tables. Returns the buyers and each read scenario's path."""
    pool = data.users(buyers)
    empty, sold = data.event(MAP_SEATS), data.event(MAP_SEATS)
    data.sell(sold, fraction=0.9, buyers=pool)
    data.slots(data.users(50, role="HOST"), per_host=LISTED_SLOTS // 50)
    busy, first_day = data.busy_host(days=FREE_TIME_DAYS)
    data.ceiling_tables()
    data.analyze()
    reads = {
        "event-counts-0": f"/api/events/{empty.pk}",
        "event-counts-90": f"/api/events/{sold.pk}",
        "seat-map-0": f"/api/events/{empty.pk}/seats",
        "seat-map-90": f"/api/events/{sold.pk}/seats",
        "slot-list": "/api/slots",
        "users-me": "/api/users/me",
        "free-times": (
            f"/api/users/{busy.id}/slots?startDate={first_day}"
            f"&endDate={first_day + timedelta(days=FREE_TIME_DAYS - 1)}&slotDuration=30"
        ),
    }
    return pool, reads


# --- scale-out: the same load through HAProxy in front of more web processes -----------------------------

SCALE_WEB = (1, 2, 4)


def scaled(bench: Bench, name: str, *, web: int, load: str) -> Measurement:
    """Spread car holds (``load="car-hold"``) or event counts (``"event-counts"``) through ``manage.py
    cluster`` with ``web`` web processes of one worker each. CPU: ``server`` is HAProxy and the web
    processes together, ``haproxy`` its share."""
    assert isinstance(bench.server, Server)  # scale-out is ours only
    port = bench.server.port + 10
    with Cluster(
        database_url=bench.database_url, port=port, web=web, log_path=bench.workdir / f"{name}.log"
    ) as cluster:
        groups = {"server": cluster.pids, "haproxy": cluster.haproxy, "postgres": bench.meter.groups["postgres"]}
        through = dataclasses.replace(bench, server=cluster, meter=Meter(groups))
        if load == "car-hold":
            measurement = car_holds(through, name, idempotent=False)
        else:
            measurement = dataclasses.replace(read(through, "event-counts-0"), scenario=name)
    measurement.kind = "scale"
    measurement.extra.update(web=web, haproxy_ms=measurement.cpu_ms.pop("haproxy"))
    return measurement


# --- the catalogue, in the order a run measures them --------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    run: Callable[[Bench, str], Measurement]


def _scenarios() -> list[Scenario]:
    listed = [Scenario("ceiling", "ceiling", ceiling)]
    for domain, measure in (("car-hold", car_holds), ("seat-hold", seat_holds), ("slot-book", slot_bookings)):
        listed.append(Scenario(domain, "write", partial(measure, idempotent=False)))
        listed.append(Scenario(f"{domain}-key", "write", partial(measure, idempotent=True)))
    listed += [Scenario("hot-car", "hot", hot_car), Scenario("hot-seat", "hot", hot_seat)]
    listed.append(Scenario("hot-slot", "hot", hot_slot))
    for name in (
        "event-counts-0",
        "event-counts-90",
        "seat-map-0",
        "seat-map-90",
        "slot-list",
        "users-me",
        "free-times",
        "free-times-latency",
    ):
        listed.append(Scenario(name, "read", read))
    for holds in SWEEP_SIZES:
        listed.append(Scenario(f"sweep-{holds // 1000}k", "sweep", partial(sweep, holds=holds)))
    listed.append(Scenario("onsale", "onsale", on_sale))
    for load in ("car-hold", "event-counts"):
        for web in SCALE_WEB:
            listed.append(Scenario(f"scale-{load}-web{web}", "scale", partial(scaled, web=web, load=load)))
    return listed


SCENARIOS = _scenarios()
