"""make bench: the measuring instrument (docs/benchmarks.md).

Creates a fresh <database>_bench database on the configured PostgreSQL server (the embedded one when
DATABASE_URL is unset), migrates it and fills it, starts the server with `manage.py serve` (production
settings, 127.0.0.1), drives every scenario from a separate process (wrk; a barrier client for the
hot-resource races; pgbench for the ceiling; `manage.py expire_holds` for the sweep; bench.onsale for
the on-sale through the admission queue; `manage.py cluster`,
HAProxy in front of 1, 2 and 4 web processes, for the scale-out), stops all of it,
drops the database (unless --keep-db) and prints the medians of --runs runs.

Exit status 1 when a check failed (a hot-resource race with other than one winner and 199 x 409, a
sweep that did not expire its backlog, an on-sale that sold a seat twice or admitted out of join
order); the table is printed either way.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import django
import psutil

from bench import database
from bench.load import wrk_path
from bench.server import ROOT

DEFAULT_PORT = 18400


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario; the table shows medians (3)")
    parser.add_argument("--seconds", type=float, default=10, help="length of each wrk and pgbench scenario (10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk and pgbench connections (50)")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=20_000,
        help="most requests of one scenario run; the write scenarios create this many resources (20000)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="scenarios to run, by name or shell pattern ('hot-*'); the ceiling always runs with writes. "
        "Names: " + ", ".join(SCENARIO_NAMES),
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every run's raw results and the medians here")
    parser.add_argument("--plot", type=Path, metavar="PATH.png", help="write a PNG of req/s and p99 per scenario here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="after the runs, run the --profile-scenarios once more under py-spy and write the stacks and a "
        "summary grouped by library to DIR (needs root, or ptrace permission)",
    )
    parser.add_argument(
        "--profile-scenarios",
        nargs="+",
        default=["car-hold", "users-me"],
        metavar="NAME",
        help="the scenarios --profile records (car-hold users-me)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the server's port on 127.0.0.1 ({DEFAULT_PORT})"
    )
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY for the server (2)")
    parser.add_argument(
        "--onsale-rate",
        type=int,
        default=3000,
        metavar="N",
        help="the on-sale's admissions per minute (3000: its 500 seats sell in about ten seconds)",
    )
    parser.add_argument("--keep-db", action="store_true", help="leave the bench database for inspection")
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="register an active webhook endpoint first, so every write kicks a delivery run (published to "
        "the broker; no worker runs, nothing is sent): the request path as it is with a subscriber",
    )
    seeds = parser.add_argument_group(
        "side by side with the seeds (started by you first, with the data of docs/benchmarks.md)"
    )
    for seed, example in (("seed001", "http://127.0.0.1:4000"), ("seed004", "http://127.0.0.1:4004")):
        seeds.add_argument(f"--{seed}", metavar="URL", help=f"also drive {seed} at URL, e.g. {example}")
        seeds.add_argument(
            f"--{seed}-db", metavar="DATABASE_URL", help=f"{seed}'s database, to count its PostgreSQL CPU too"
        )
    return parser.parse_args(argv)


SCENARIO_NAMES = [
    "ceiling",
    *(f"{d}{k}" for d in ("car-hold", "seat-hold", "slot-book") for k in ("", "-key")),
    "hot-car",
    "hot-seat",
    "hot-slot",
    *("event-counts-0", "event-counts-90", "seat-map-0", "seat-map-90", "slot-list", "users-me", "free-times"),
    "free-times-latency",
    "sweep-10k",
    "sweep-100k",
    "onsale",
    *(f"scale-{load}-web{web}" for load in ("car-hold", "event-counts") for web in (1, 2, 4)),
]


def select(patterns: list[str] | None, scenarios: list) -> list:
    if not patterns:
        return scenarios
    unknown = [p for p in patterns if not any(fnmatch.fnmatch(s.name, p) for s in scenarios)]
    if unknown:
        raise SystemExit(f"no scenario matches {unknown}; the scenarios are: {', '.join(SCENARIO_NAMES)}")
    chosen = [s for s in scenarios if any(fnmatch.fnmatch(s.name, p) for p in patterns)]
    if any(s.kind in ("write", "hot") for s in chosen) and not any(s.kind == "ceiling" for s in chosen):
        chosen.insert(0, next(s for s in scenarios if s.kind == "ceiling"))
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk_path()  # stop at once, with the install command, when wrk is missing
    started = time.monotonic()
    target = database.bench_of(database.configured())
    print(f"bench database {target.name} on {target.host}:{target.port} (created fresh)", flush=True)
    database.recreate(target)
    os.environ["DATABASE_URL"] = target.url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    try:
        return measure(args, target, started)
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep_db:
            print(f"left the bench database {target.name} (--keep-db)")
        else:
            database.drop(target)
            print(f"dropped the bench database {target.name}")


def measure(args: argparse.Namespace, target: database.Database, started: float) -> int:
    from django.core.management import call_command

    from bench import report, scenarios, seeds
    from bench.cpu import Meter
    from bench.server import Server

    chosen = select(args.only, scenarios.SCENARIOS)
    call_command("migrate", verbosity=0)
    print("creating the shared data (users, two 20,000-seat events, 50,000 slots) ...", flush=True)
    buyers, reads = scenarios.shared_data(buyers=max(1000, args.connections, scenarios.HOT_CLIENTS))
    if args.webhook:
        register_webhook()
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=ROOT / "var" if (ROOT / "var").is_dir() else None))
    measurements = []
    with (
        database_monitor(target) as postgres,
        Server(
            database_url=target.url, port=args.port, workers=args.workers, log_path=workdir / "server.log"
        ) as server,
    ):
        bench = scenarios.Bench(
            server=server,
            meter=Meter({"server": server.pids, "postgres": postgres}),
            database_url=target.url,
            workdir=workdir,
            seconds=args.seconds,
            connections=args.connections,
            max_requests=args.max_requests,
            buyers=buyers,
            reads=reads,
            onsale_rate=args.onsale_rate,
        )
        seen = "measured" if postgres.local else "not visible (a server on another machine)"
        print(f"server up at {server.url} ({args.workers} workers); PostgreSQL CPU {seen}")
        with seeds.SeedRuns(
            {"seed001": args.seed001, "seed004": args.seed004}, {"seed001": args.seed001_db, "seed004": args.seed004_db}
        ) as seed_runs:
            ours = [(s.name, lambda run, s=s: s.run(bench, s.name)) for s in chosen]
            theirs = [(s.name, s.run_against(bench)) for s in seed_runs.scenarios(wanted={s.name for s in chosen})]
            for run in range(1, args.runs + 1):
                for name, measure_one in ours + theirs:
                    measurements.append(announced(run, args.runs, name, measure_one))
        if args.profile:
            from bench import profile

            profile.record(bench, [s for s in scenarios.SCENARIOS if s.name in args.profile_scenarios], args.profile)

    for tickets in workdir.glob("*.tsv"):  # megabytes each; the server's log stays
        tickets.unlink()
    summaries = report.summarize(measurements)
    machine = machine_description(target, server_pg_version(), time.monotonic() - started, args)
    print()
    print(
        f"{machine['date']}  {machine['cores']} cores  PostgreSQL {machine['postgresql']}  runs {args.runs}  "
        f"{args.seconds:g} s  {args.connections} connections  medians"
    )
    print(report.table(summaries))
    side_by_side = seeds.ratios(summaries)
    if side_by_side:
        print("\nside by side with the seeds (same run, same clients; medians)")
        print(side_by_side)
    if args.json:
        report.write_json(args.json, machine=machine, measurements=measurements, summaries=summaries)
        print(f"raw results: {args.json}")
    if args.plot:
        report.plot(
            args.plot,
            summaries,
            title=f"booking_site, {machine['cores']} cores, {machine['date']} (medians of {args.runs})",
        )
        print(f"plot: {args.plot}")
    print(f"took {machine['took_s'] / 60:.1f} min; the server's log is {workdir / 'server.log'}")
    failures = [failure for s in summaries for failure in s.failures]
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def register_webhook() -> None:
    from django.conf import settings
    from django.utils import timezone

    from bench import data
    from web.webhooks.services import webhook_endpoint_create

    settings.WEBHOOKS_ALLOW_PRIVATE_URLS = True  # the discard port of this machine: never sent to (no worker)
    endpoint = webhook_endpoint_create(
        organisation_id=data.organisation(),
        url="http://127.0.0.1:9/bench",
        description="make bench --webhook",
        now=timezone.now(),
    )
    print(f"webhook endpoint {endpoint.pk} registered ({endpoint.url}): writes kick delivery runs", flush=True)


def announced(run: int, runs: int, name: str, measure):
    print(f"run {run}/{runs}  {name:<24}", end=" ", flush=True)
    result = measure(run)
    print(progress(result), flush=True)
    return result


def progress(result) -> str:
    if result.failures:
        return "FAILED"
    if result.kind == "sweep":
        return f"{result.extra['holds_per_s']:,.0f} holds/s, peak {result.extra['peak_mb']:.0f} MB"
    if result.kind == "onsale":
        e = result.extra
        return (
            f"{e['sold']} seats sold in {e['sold_out_s']:.1f} s at {e['rate_per_min']}/min; "
            f"the last buyer waited {e.get('last_buyer_wait_s', 0):.1f} s"
        )
    statuses = " ".join(f"{status}:{n}" for status, n in sorted(result.statuses.items()))
    line = f"{result.rps:,.0f}/s p99 {result.p99_ms or 0:.1f} ms {statuses}".rstrip()
    if result.extra.get("stopped_threads"):
        line += "  (tickets ran out before the time: req/s understated; raise --max-requests)"
    return line


class database_monitor:
    """An autocommit connection to the bench database for finding its PostgreSQL processes."""

    def __init__(self, target: database.Database):
        self.target = target

    def __enter__(self):
        self.conn = self.target.connect(autocommit=True)
        return database.PostgresProcesses(self.conn)

    def __exit__(self, *exc):
        self.conn.close()


def server_pg_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        return cursor.fetchone()[0]


def machine_description(target, pg_version: str, took_s: float, args) -> dict:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": psutil.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "postgresql": pg_version,
        "database": f"{target.host}:{target.port}/{target.name}",
        "python": platform.python_version(),
        "runs": args.runs,
        "seconds": args.seconds,
        "connections": args.connections,
        "took_s": took_s,
    }


if __name__ == "__main__":
    sys.exit(main())
