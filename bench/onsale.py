"""The simulated on-sale (issue 12): BUYERS users join the admission queue of a SEATS-seat event at once,
the admission job lets them in at ``--onsale-rate`` a minute, and each admitted buyer holds one seat
with its ``X-Queue-Token`` and confirms it, until the event is sold out.

The buyers are CLIENTS keep-alive HTTP connections of this process (standard library), each joining
its share of the buyers one after the other, then, in the order they joined, polling each one's entry
every POLL_SECONDS until it is admitted and buying; the admission job runs every ADMIT_EVERY_SECONDS
from the start, in a thread of this process (``events.queue.queues_admit_due``, what beat's worker
runs), against the same database: the sale is on while buyers still join. Checks (a failure exits
1, as the races do): every seat sold once, to an admitted buyer; admitted strictly in join order,
each once; nothing but the expected answers. Reports how long the last buyer who got a seat waited,
from its join to its booking.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from django.db import connections
from django.utils import timezone

from bench import data
from bench.stats import percentile
from core.audit.models import AuditEvent
from events.models import EventQueue, QueueEntry, SeatClaim
from events.queue import queues_admit_due
from events.services import events

BUYERS = 2_000
SEATS = 500
CLIENTS = 50
POLL_SECONDS = 0.2
ADMIT_EVERY_SECONDS = 1.0
GIVE_UP_SECONDS = 300  # a run that has not sold out by then has failed


@dataclass
class Buyer:
    user: data.User
    token: str = ""
    joined_at: float = 0.0
    booked_at: float | None = None


@dataclass
class Outcome:
    statuses: dict[str, int] = field(default_factory=dict)  # "<request> <status>" -> count
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str, status: int, seconds: float) -> None:
        with self.lock:
            key = f"{what} {status}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            self.latencies_ms.append(seconds * 1000)


class Client:
    """One keep-alive connection, as one browser tab of a buyer."""

    def __init__(self, address: str, outcome: Outcome):
        host, port = address.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=30)
        self.outcome = outcome

    def call(self, what: str, method: str, path: str, token: str, body: dict | None = None, **headers) -> tuple:
        payload = json.dumps(body).encode() if body is not None else None
        started = time.perf_counter()
        self.connection.request(
            method,
            path,
            body=payload,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json", **headers},
        )
        response = self.connection.getresponse()
        answer = json.loads(response.read() or b"{}")
        self.outcome.count(what, response.status, time.perf_counter() - started)
        return response.status, answer


def run(*, address: str, rate: int) -> dict:
    """Sell one SEATS-seat event to BUYERS queued buyers; returns the figures and the failed checks."""
    event = data.event(SEATS)
    events.event_update_details(
        event_id=event.pk, actor=None, now=timezone.now(), queue_enabled=True, admitted_per_minute=rate
    )
    buyers = [Buyer(user) for user in data.users(BUYERS)]
    outcome = Outcome()
    base = f"/api/events/{event.pk}"

    sold_out, stop = threading.Event(), threading.Event()
    joined_s: list[float] = []

    def admit() -> None:
        try:
            while not stop.is_set():
                queues_admit_due(now=timezone.now())
                stop.wait(ADMIT_EVERY_SECONDS)
        finally:
            connections.close_all()

    def buy(share: list[Buyer]) -> None:
        """Join every buyer of the share, then, in the order they joined, wait for each to be admitted
        and buy one seat, until the event is sold out."""
        client = Client(address, outcome)
        for buyer in share:
            buyer.joined_at = time.monotonic()
            _, entry = client.call("join", "POST", f"{base}/queue", buyer.user.token)
            buyer.token = entry.get("token", "")
        joined_s.append(time.monotonic() - started)
        for buyer in share:
            while not sold_out.is_set() and time.monotonic() - started < GIVE_UP_SECONDS:
                _, entry = client.call("poll", "GET", f"{base}/queue/{buyer.token}", buyer.user.token)
                if entry.get("state") == "ADMITTED":
                    break
                time.sleep(POLL_SECONDS)
            else:
                return
            status, hold = client.call(
                "hold",
                "POST",
                f"{base}/seats/reserve",
                buyer.user.token,
                {"quantity": 1},
                **{"X-Queue-Token": buyer.token},
            )
            if status == 409 and hold.get("error", {}).get("code") == "seats_unavailable":
                sold_out.set()
                return
            if status != 201:
                continue
            status, _ = client.call(
                "confirm", "POST", f"{base}/seats/confirm", buyer.user.token, {"holdGroupId": hold["holdGroupId"]}
            )
            if status == 200:
                buyer.booked_at = time.monotonic()

    started = time.monotonic()
    admitter = threading.Thread(target=admit)
    admitter.start()
    try:
        _in_threads([lambda share=buyers[i::CLIENTS]: buy(share) for i in range(CLIENTS)])
    finally:
        stop.set()
        admitter.join()
    sold_out_s = time.monotonic() - started
    served = [b for b in buyers if b.booked_at is not None]
    waits = sorted(b.booked_at - b.joined_at for b in served if b.booked_at is not None)
    return {
        "event": event,
        "outcome": outcome,
        "failures": checks(event.pk, outcome, sold=len(served)),
        "extra": {
            "buyers": BUYERS,
            "seats": SEATS,
            "rate_per_min": rate,
            "sold": len(served),
            "joined_s": max(joined_s, default=0.0),
            "sold_out_s": sold_out_s,
            "last_buyer_wait_s": waits[-1] if waits else None,
            "median_wait_s": percentile(waits, 50) if waits else None,
        },
    }


def _in_threads(functions: list) -> None:
    threads = [threading.Thread(target=f) for f in functions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


EXPECTED = {"join 201", "poll 200", "hold 201", "hold 409", "confirm 200"}


def checks(event_id: int, outcome: Outcome, *, sold: int) -> list[str]:
    """What must hold after the on-sale, read from the database."""
    failures = []
    unexpected = {k: n for k, n in outcome.statuses.items() if k not in EXPECTED}
    if unexpected:
        failures.append(f"onsale: unexpected answers {unexpected}")
    booked = list(SeatClaim.objects.filter(event_id=event_id, state="CONFIRMED").values_list("seat_id", flat=True))
    if (len(booked), len(set(booked)), sold) != (SEATS, SEATS, SEATS):
        failures.append(f"onsale: {len(set(booked))} seats booked ({len(booked)} claims), {sold} buyers served")
    holders = set(SeatClaim.objects.filter(event_id=event_id).values_list("group__user_id", flat=True))
    admitted = set(
        QueueEntry.objects.filter(event_id=event_id, state__in=["ADMITTED", "EXPIRED"]).values_list(
            "user_id", flat=True
        )
    )
    if not holders <= admitted:
        failures.append(f"onsale: {len(holders - admitted)} users held seats without an admission")
    row = EventQueue.objects.get(pk=event_id)
    numbers = [
        n
        for (n,) in QueueEntry.objects.filter(event_id=event_id, state__in=["ADMITTED", "EXPIRED"])
        .order_by("admitted_at", "number")
        .values_list("number")
    ]
    admissions = AuditEvent.objects.filter(
        subject_type="queue_entry", event_type="ADMITTED", metadata__eventId=event_id
    )
    if numbers != list(range(1, row.admitted_through + 1)) or admissions.count() != len(numbers):
        failures.append(
            f"onsale: admitted out of join order or twice ({len(numbers)} admitted, {admissions.count()} admissions "
            f"recorded, mark {row.admitted_through})"
        )
    return failures
