"""Car holds over HTTP under contention: many clients holding and cancelling the same few cars.

    .venv/bin/python bench/http_holds_bench.py [--seconds 15] [--clients 16] [--cars 20] [--workers 4]

Starts gunicorn on 127.0.0.1 against the configured database (the embedded one when DATABASE_URL is
unset), creates its own cars and buyers, then runs ``--clients`` threads for ``--seconds``: each picks
a random car, POSTs a hold, and when it gets one cancels it at once, so the cars keep changing hands.
Prints throughput, p50/p99 latency per request kind, the status codes, and the errors (anything but
201, 200 and 409 ``car_unavailable``); then checks the database: no car ever had two active holds.
Stops by itself; the rows it created stay, like any other data.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "booking_site.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db.models import Count, Q  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from booking_site import embedded  # noqa: E402
from booking_site.accounts.models import User  # noqa: E402
from reservations.models import Car, Reservation  # noqa: E402
from reservations.services import car_create  # noqa: E402


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] if ordered else float("nan")


def start_gunicorn(port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "DEBUG": "False", "SECURE_SSL_REDIRECT": "False", "LOG_LEVEL": "WARNING"}
    if not os.environ.get("DATABASE_URL"):
        env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "booking_site.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            str(workers),
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise SystemExit("gunicorn did not come up within 30 s")


def client_loop(port, token, car_ids, stop_at, samples, statuses, lock, rng) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}

    def call(kind: str, path: str, body: dict) -> tuple[int, dict]:
        start = time.perf_counter()
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        payload = json.loads(response.read() or b"{}")
        elapsed = (time.perf_counter() - start) * 1000
        code = payload.get("error", {}).get("code", "") if response.status >= 400 else ""
        with lock:
            samples[kind].append(elapsed)
            statuses[(kind, response.status, code)] += 1
        return response.status, payload

    while time.monotonic() < stop_at:
        status, body = call("hold", "/api/reservations", {"carId": rng.choice(car_ids), "holdDurationMinutes": 1})
        if status == 201:
            call("cancel", f"/api/reservations/{body['id']}/cancel", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--cars", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    run = int(time.time())
    car_ids = [car_create(dealer_id=900, label=f"bench {run} #{i}").pk for i in range(args.cars)]
    tokens = []
    for i in range(args.clients):
        user = User.objects.create(username=f"bench-{run}-{i}@example.com", email=f"bench-{run}-{i}@example.com")
        tokens.append(Token.objects.create(user=user).key)

    server = start_gunicorn(args.port, args.workers)
    samples: dict[str, list[float]] = {"hold": [], "cancel": []}
    statuses: Counter = Counter()
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds
    threads = [
        threading.Thread(
            target=client_loop,
            args=(args.port, token, car_ids, stop_at, samples, statuses, lock, random.Random(args.seed + i)),
        )
        for i, token in enumerate(tokens)
    ]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        elapsed = time.monotonic() - started
        server.terminate()
        server.wait(10)

    total = sum(statuses.values())
    errors = sum(n for (kind, status, code), n in statuses.items() if status not in (200, 201, 409))
    print(f"{args.clients} clients, {args.cars} cars, {args.workers} gunicorn workers, {elapsed:.1f} s")
    print(f"requests: {total}  throughput: {total / elapsed:.0f} req/s  errors: {errors}")
    for kind, values in samples.items():
        if values:
            print(
                f"  {kind:<6} n={len(values):<6} p50={percentile(values, 50):6.1f} ms  "
                f"p99={percentile(values, 99):6.1f} ms  mean={statistics.fmean(values):6.1f} ms"
            )
    for (kind, status, code), n in sorted(statuses.items()):
        print(f"  {kind:<6} {status} {code:<18} {n}")

    double = (
        Reservation.objects.filter(car_id__in=car_ids)
        .values("car_id")
        .annotate(active=Count("id", filter=Q(state__in=Reservation.BLOCKING_STATES)))
        .filter(active__gt=1)
        .count()
    )
    held = Reservation.objects.filter(car_id__in=car_ids).count()
    print(f"reservations written: {held}; cars with two active holds: {double}")
    Car.objects.filter(pk__in=car_ids).update(status=Car.Status.INACTIVE)  # out of the way of real data
    if errors or double:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
