"""Side by side with the seeds: the scenarios of ours that a seed also serves, driven against the seed
the operator started as docs/benchmarks.md describes, in the same run, by the same clients, and the
ratios. The seeds' data is the layout that procedure loads:

    seeds/001 (events, seat holds in Redis)   event 1: 60,000 seats S1…S60000 for the spread holds
                                              event 2: 100 seats, the hot seat (run r races for S<r>)
                                              events 3 and 4: 20,000 seats, 0 % and 90 % sold
    seeds/004 (slots)                         slot n = 00000000-0000-4000-8000-<n, 12 digits>,
                                              n = 1…60000, capacity 1; hot slot of run r =
                                              ffffffff-0000-4000-8000-<r, 12 digits>, capacity 1

Each run takes its own third of the spread resources, so three runs need no reset; a second
``make bench --seed…`` needs the seeds' data loaded afresh (the procedure's reset step).
The seeds take no token: a ticket's token is "-". Their CPU is the process tree listening on the
seed's port; PostgreSQL's is counted when ``--seed00N-db`` names the seed's database.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import psutil
import psycopg

from bench import cpu, database
from bench.cpu import Meter
from bench.load import Ticket, run_burst
from bench.report import grid
from bench.scenarios import HOT_CLIENTS, Bench, Measurement, measured, wrk

SPREAD_RESOURCES = 60_000  # seats of seed 001's event 1, slots of seed 004
RUNS_WITHOUT_RESET = 3


@dataclass(frozen=True)
class Seed:
    """A seed system the operator runs, as the scenarios see a server: a URL and its processes."""

    name: str
    url: str

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    def pids(self) -> list[int]:
        """The process tree of whatever listens on the seed's port."""
        port = urlsplit(self.url).port
        with contextlib.suppress(psutil.Error):
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
                    return cpu.tree(conn.pid)
        return []


def spread_range(run: int) -> range:
    """The spread resources run ``run`` (1-based) may use: its own third of them."""
    share = SPREAD_RESOURCES // RUNS_WITHOUT_RESET
    first = 1 + (run - 1) % RUNS_WITHOUT_RESET * share
    return range(first, first + share)


def _against(bench: Bench, seed: Seed, postgres) -> Bench:
    groups = {"server": seed.pids, "postgres": postgres or (lambda: [])}
    return replace(bench, server=seed, meter=Meter(groups))


# --- seeds/001 ----------------------------------------------------------------------------------------


def seed001_seat_holds(bench: Bench, name: str, run: int) -> Measurement:
    """Our seat-hold: 1-4 adjacent seats by code per request, each seat once."""
    rng, seats = random.Random(7), iter(spread_range(run))
    tickets = []
    with contextlib.suppress(StopIteration):
        while True:
            codes = [f"S{next(seats)}" for _ in range(rng.randint(1, 4))]
            tickets.append(
                Ticket("POST", "/events/1/seats/reserve", "-", {"userId": f"bench-{codes[0]}", "seatCodes": codes})
            )
    return measured(bench, name, "write", wrk(bench, name, tickets, once=True), expected=200)


def seed001_hot_seat(bench: Bench, name: str, run: int) -> Measurement:
    body = {"seatCodes": [f"S{run}"]}
    tickets = [
        Ticket("POST", "/events/2/seats/reserve", "-", {"userId": f"hot-{n}", **body}) for n in range(HOT_CLIENTS)
    ]
    path = bench.tickets(name, tickets)
    return measured(bench, name, "hot", lambda: run_burst(address=bench.server.address, tickets=path), expected=200)


def seed001_counts(event_id: int):
    def measure(bench: Bench, name: str, run: int) -> Measurement:
        tickets = [Ticket("GET", f"/events/{event_id}", "-")] * len(bench.buyers)  # one per wrk thread and more
        return measured(bench, name, "read", wrk(bench, name, tickets, once=False), expected=200)

    return measure


# --- seeds/004 ----------------------------------------------------------------------------------------


def slot_uuid(prefix: str, number: int) -> str:
    return f"{prefix}-0000-4000-8000-{number:012d}"


def seed004_bookings(bench: Bench, name: str, run: int) -> Measurement:
    """Our slot-book: one booking of a capacity-1 slot per request, each slot once."""
    tickets = [
        Ticket(
            "POST", "/api/bookings", "-", {"slot_id": slot_uuid("00000000", n), "user_id": f"bench-{n}", "num_seats": 1}
        )
        for n in spread_range(run)
    ]
    return measured(bench, name, "write", wrk(bench, name, tickets, once=True), expected=201)


def seed004_hot_slot(bench: Bench, name: str, run: int) -> Measurement:
    body = {"slot_id": slot_uuid("ffffffff", run), "num_seats": 1}
    tickets = [Ticket("POST", "/api/bookings", "-", {**body, "user_id": f"hot-{n}"}) for n in range(HOT_CLIENTS)]
    path = bench.tickets(name, tickets)
    load_box = {}

    def drive():
        load_box["load"] = run_burst(address=bench.server.address, tickets=path)
        return load_box["load"]

    result = measured(bench, name, "hot", drive, expected=201)
    result.extra["outcomes"] = load_box["load"].extra.get("outcomes", {})  # 201 CONFIRMED vs 201 FAILED
    return result


# Our scenario each seed scenario is compared with.
PAIRS = {
    "seed001": [
        ("seat-hold", seed001_seat_holds),
        ("hot-seat", seed001_hot_seat),
        ("event-counts-0", seed001_counts(3)),
        ("event-counts-90", seed001_counts(4)),
    ],
    "seed004": [("slot-book", seed004_bookings), ("hot-slot", seed004_hot_slot)],
}


class SeedRuns:
    """The seeds given on the command line, each with its PostgreSQL processes when its database is."""

    def __init__(self, urls: dict[str, str | None], databases: dict[str, str | None]):
        self.seeds = {name: Seed(name, url) for name, url in urls.items() if url}
        self.databases = {name: url for name, url in databases.items() if url and name in self.seeds}
        self._connections: list[psycopg.Connection] = []

    def __enter__(self) -> SeedRuns:
        self.postgres = {}
        for name, url in self.databases.items():
            conn = database.from_url(url).connect(autocommit=True)
            self._connections.append(conn)
            self.postgres[name] = database.PostgresProcesses(conn)
        return self

    def __exit__(self, *exc) -> None:
        for conn in self._connections:
            conn.close()

    def scenarios(self, *, wanted: set[str]) -> list[SeedScenario]:
        """Every seed scenario whose counterpart of ours is among the ``wanted`` scenarios."""
        return [
            SeedScenario(f"{name}:{ours}", seed, self.postgres.get(name), measure)
            for name, seed in self.seeds.items()
            for ours, measure in PAIRS[name]
            if ours in wanted
        ]


@dataclass(frozen=True)
class SeedScenario:
    name: str
    seed: Seed
    postgres: Callable[[], list[int]] | None  # its PostgreSQL's processes, when on this machine
    measure: Callable[[Bench, str, int], Measurement]

    def run_against(self, bench: Bench):
        """A function of the run number measuring this scenario against the seed."""
        against = _against(bench, self.seed, self.postgres)
        return lambda run: self.measure(against, self.name, run)


def ratios(summaries: list) -> str:
    """Ours against each seed, scenario by scenario: req/s and p99 side by side."""
    by_name = {s.scenario: s for s in summaries}
    rows = [["scenario", "ours req/s", "seed req/s", "ours/seed", "ours p99", "seed p99", "seed statuses"]]
    for s in summaries:
        _, _, ours_name = s.scenario.partition(":")
        ours = by_name.get(ours_name)
        if not ours_name or ours is None or not s.rps or ours.rps is None:
            continue
        outcomes = " ".join(f"{k}:{v}" for k, v in s.extra.get("outcomes", {}).items())
        statuses = " ".join(f"{k}:{v}" for k, v in s.statuses.items()) + (f" ({outcomes})" if outcomes else "")
        figures = [ours.rps, s.rps, ours.rps / s.rps, ours.p99_ms or 0, s.p99_ms or 0]
        formats = [",.0f", ",.0f", ".2f", ",.1f", ",.1f"]
        rows.append([s.scenario, *(format(f, spec) for f, spec in zip(figures, formats, strict=True)), statuses])
    return grid(rows) if len(rows) > 1 else ""
