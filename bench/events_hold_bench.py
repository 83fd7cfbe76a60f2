"""Seat holds and event counts on a 20,000-seat event, at 0 % and at 90 % sold (issue 3).

    DATABASE_URL=postgres://... .venv/bin/python bench/events_hold_bench.py [--iterations 200]

Creates its own event and users (left in the database, like any other event), fills it to 90 % through
the services (holds of 50 seats, confirmed), and prints p50 / p99 latencies of:
  - hold 4 seats by code (the seats picked at random among the free ones), released afterwards untimed;
  - hold 4 best-available seats (adjacent in a row where possible), released afterwards untimed;
  - the event's counts (confirmedSeats, heldSeats, availableSeats: the query behind GET /api/events/{id}).
Each measured call is one service call in its own transaction, as a request would make it.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "booking_site.settings")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from booking_site.accounts.models import User  # noqa: E402
from events import selectors, services  # noqa: E402
from events.models import Seat  # noqa: E402

LAYOUT = services.SeatLayout(sections=("A", "B", "C", "D"), rows=50, seats_per_row=100)  # 20,000 seats


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1000, result


def free_codes(event) -> list[str]:
    return [s["code"] for s in selectors.seat_map(event=event, now=timezone.now()) if s["status"] == "AVAILABLE"]


def measure(event, user, iterations: int, rng: random.Random) -> dict[str, list[float]]:
    free = free_codes(event)
    samples: dict[str, list[float]] = {"hold 4 by code": [], "hold 4 best-available": [], "counts": []}
    for _ in range(iterations):
        codes = rng.sample(free, 4)
        ms, group = timed(
            lambda codes=codes: services.seat_hold(event_id=event.pk, user=user, seat_codes=codes, now=timezone.now())
        )
        samples["hold 4 by code"].append(ms)
        services.seat_hold_release(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

        ms, group = timed(lambda: services.seat_hold(event_id=event.pk, user=user, quantity=4, now=timezone.now()))
        samples["hold 4 best-available"].append(ms)
        services.seat_hold_release(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())

        ms, counted = timed(lambda: selectors.event_with_counts(event_id=event.pk, now=timezone.now()))
        samples["counts"].append(ms)
        assert counted.confirmed_seats + counted.held_seats + counted.available_seats == counted.total_seats
    return samples


def fill(event, users: list[User], fraction: float, rng: random.Random) -> None:
    codes = list(Seat.objects.filter(event=event).values_list("code", flat=True))
    rng.shuffle(codes)
    sold = codes[: int(len(codes) * fraction)]
    for i in range(0, len(sold), services.MAX_SEATS_PER_HOLD):
        user = users[i // services.MAX_SEATS_PER_HOLD % len(users)]
        group = services.seat_hold(
            event_id=event.pk, user=user, seat_codes=sold[i : i + services.MAX_SEATS_PER_HOLD], now=timezone.now()
        )
        services.seat_hold_confirm(event_id=event.pk, hold_group_id=group.pk, user=user, now=timezone.now())
    with connection.cursor() as cursor:  # what autovacuum would do on a live system after a bulk fill
        cursor.execute("ANALYZE events_seat; ANALYZE events_seatclaim; ANALYZE events_seatholdgroup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tag = f"{int(time.time())}-{os.getpid()}"
    users = [User.objects.create(username=f"bench-{tag}-{i}", email=f"bench-{tag}-{i}@example.com") for i in range(20)]
    started = time.perf_counter()
    ms, event = timed(
        lambda: services.event_create(
            name=f"Bench {tag}",
            event_date=timezone.now() + timedelta(days=30),
            location="bench",
            layout=LAYOUT,
            now=timezone.now(),
        )
    )
    print(f"created event {event.pk} with {event.total_seats} seats in {ms:.0f} ms")

    results = {"0 %": measure(event, users[0], args.iterations, rng)}
    ms, _ = timed(lambda: fill(event, users, 0.9, rng))
    print(f"sold 90 % ({int(event.total_seats * 0.9)} seats, holds of 50 confirmed) in {ms / 1000:.1f} s")
    results["90 %"] = measure(event, users[0], args.iterations, rng)

    print(f"\n{args.iterations} iterations each, milliseconds")
    print(f"{'operation':<24}{'sold':>6}{'p50':>9}{'p99':>9}{'mean':>9}")
    for operation in results["0 %"]:
        for sold, samples in results.items():
            values = samples[operation]
            print(
                f"{operation:<24}{sold:>6}{percentile(values, 50):>9.2f}{percentile(values, 99):>9.2f}"
                f"{statistics.fmean(values):>9.2f}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
