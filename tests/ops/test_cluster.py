"""The guarantees hold across processes (docs/contract.md §8.3, deploy/README.md): `manage.py cluster`
with HAProxy in front of four web processes, two Celery workers and two beats on the test database, and
the races of the domain tests sent through it, or straight to different web processes."""

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import timedelta

import psutil
import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count
from django.test import override_settings
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from rest_framework.authtoken.models import Token

from bench import data
from bench.burst import at_once, connect, raw_request
from core.apps import ensure_beat_schedule
from core.audit.models import AuditEvent
from core.invariants import describe, invariants_check
from events.models import SeatClaim
from ops import embedded
from ops.supervisor import group_members
from reservations.models import Reservation
from slots.models import Slot, SlotBooking
from tests.lengths import short_and_long
from tests.processes import left_running, stop_group
from web.webhooks.models import WebhookDelivery
from web.webhooks.services import webhook_endpoint_create

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

WEB = 4
TOKEN_CACHE_SECONDS = 2  # the web processes' AUTH_TOKEN_CACHE_SECONDS, short to keep the test short
SOAK_SECONDS = float(os.environ.get("CLUSTER_SOAK_SECONDS", "120"))  # the long run's (`make test-long`)
HOLDS_PER_WAVE = 5
REGISTRATIONS_PER_HOUR = 8  # the one throttle the cluster runs with (the races must not be throttled)
GRACE = 3  # the cluster's --grace (10 s by default): the last test waits it out
EXPIRE, DELIVER = "booking_site.tasks.expire_holds", "booking_site.webhooks.tasks.deliver_audit_events"
SCHEDULE = {EXPIRE: 2, DELIVER: 1}  # seconds between two runs (15 and 5 by default): the soak's holds expire all along


def free_ports(count: int) -> int:
    """A first port such that it and the ``count - 1`` after it are free."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count < 65535 and all(_free(first + n) for n in range(count)):
            return first
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Cluster:
    def __init__(self, port: int, run_dir, process: subprocess.Popen) -> None:
        self.address, self.run_dir, self.process = f"127.0.0.1:{port}", run_dir, process
        self.web = [f"127.0.0.1:{port + n}" for n in range(1, WEB + 1)]
        self.ports = {"haproxy": port, **{f"web{n}": port + n for n in range(1, WEB + 1)}}

    def leaders(self) -> dict[str, int]:
        """Each program's first process now, by name (the supervisor's last "started (pid N)" line for it);
        its process id is its process group's."""
        started = re.compile(r"\S+ (\S+) +\| started \(pid (\d+)\)$")
        lines = (self.run_dir / "cluster.log").read_text().splitlines()
        return {found[1]: int(found[2]) for found in map(started.match, lines) if found}

    def servers(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of each web process (its `show stat` row: status, stot = requests sent to it)."""
        with socket.socket(socket.AF_UNIX) as admin:
            admin.connect(str(self.run_dir / "haproxy.sock"))
            admin.sendall(b"show stat\n")
            raw = b"".join(iter(lambda: admin.recv(65536), b"")).decode()
        header, *rows = [line for line in raw.splitlines() if line]
        names = header.lstrip("# ").split(",")
        return {row["svname"]: row for row in (dict(zip(names, line.split(","), strict=False)) for line in rows)}

    def wait_until(self, condition, what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the cluster never got to: {what}")
            time.sleep(0.2)

    def all_up(self) -> bool:
        try:
            servers = self.servers()
        except OSError:
            return False
        return all(servers.get(f"web{n}", {}).get("status") == "UP" for n in range(1, WEB + 1))


@contextlib.contextmanager
def beat_schedule(seconds: dict[str, int], django_db_blocker):
    """The beats read their schedule from the database, where the test process's settings put it (when the
    test database is made, and again after each test's flush): ``seconds`` between two runs of these tasks,
    in the settings and the database while it lasts, then the default intervals again."""

    def reset() -> None:
        with django_db_blocker.unblock():
            PeriodicTask.objects.filter(task__in=seconds).delete()
            ensure_beat_schedule()

    with override_settings(BEAT_SCHEDULE_SECONDS={**settings.BEAT_SCHEDULE_SECONDS, **seconds}):
        reset()
        yield
    reset()


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker, tmp_path_factory, redis_url):
    """The cluster as production runs it: Redis its broker (two workers) and the throttle counters' shared
    cache, emptied first; its beats run the expiry and delivery jobs on SCHEDULE."""
    with beat_schedule(SCHEDULE, django_db_blocker):
        yield from _cluster(tmp_path_factory, redis_url)


def _cluster(tmp_path_factory, redis_url):
    if shutil.which("haproxy") is None:
        pytest.fail("HAProxy is not installed: apt-get install haproxy")
    port, run_dir = free_ports(WEB + 1), tmp_path_factory.mktemp("cluster")
    redis.Redis.from_url(redis_url).flushdb()
    env = {
        **os.environ,
        "DATABASE_URL": embedded.database_url(settings.DATABASES["default"]),
        "CELERY_BROKER_URL": redis_url,
        "CACHE_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "THROTTLE_ENABLED": "True",
        **{f"THROTTLE_{scope}": "none" for scope in ("ANON", "USER", "HOLDS")},
        "THROTTLE_REGISTRATION": f"{REGISTRATIONS_PER_HOUR}/hour",
        "AUTH_TOKEN_CACHE_SECONDS": str(TOKEN_CACHE_SECONDS),
        "EXPIRE_HOLDS_EVERY_SECONDS": str(SCHEDULE[EXPIRE]),  # as in the database: the invariants' bound
        "DELIVER_AUDIT_EVENTS_EVERY_SECONDS": str(SCHEDULE[DELIVER]),
        "WEBHOOKS_ALLOW_PRIVATE_URLS": "True",  # the receiver listens on 127.0.0.1
    }
    log = (run_dir / "cluster.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "cluster",
            *("--port", str(port), "--web", str(WEB), "--workers", "2"),
            *("--beats", "2", "--grace", str(GRACE), "--run-dir", str(run_dir)),
        ],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    running = Cluster(port, run_dir, process)
    try:
        running.wait_until(running.all_up, "four web processes UP in HAProxy", seconds=120)
        yield running
    finally:
        if process.poll() is None:  # the last test stops it itself
            stop_group(process, signal.SIGINT, grace=30)
        log.close()


@pytest.fixture
def committed(django_db_setup, django_db_blocker):
    """Data the cluster's processes can see: committed, as with ``transactional_db``, and emptied after the
    test. The tables are emptied while the cluster's workers and beats run their jobs on them, so the
    TRUNCATE can deadlock with a job's transaction (PostgreSQL aborts one of the two): it is tried again."""
    with django_db_blocker.unblock():
        yield
        for attempt in range(20):
            try:
                call_command("flush", interactive=False, verbosity=0)
                return
            except CommandError as error:
                if attempt == 19 or "deadlock" not in str(error.__cause__):
                    raise
                time.sleep(0.25)


def send(addresses: list[str], requests: list[tuple[str, str, str, dict]], headers: str = "") -> list[tuple[int, dict]]:
    """Open a connection per request (to its address), then send them all at once: (status, JSON body) each,
    status 0 for a connection that failed."""
    raw = []
    for address, (method, path, token, body) in zip(addresses, requests, strict=True):
        request = raw_request(f"{method}\t{path}\t{token}\t{json.dumps(body)}", address)
        raw.append(request.replace(b"\r\n\r\n", f"\r\n{headers}\r\n".encode(), 1) if headers else request)

    async def go():
        return await at_once(await connect(addresses), raw)

    return [(status, json.loads(body) if body else {}) for status, _, body in asyncio.run(go())]


def serving(address: str, token: str) -> bool:
    """Whether the web process at ``address`` serves a request now (a refused connection is a no)."""
    try:
        return get(address, "/api/cars", token) == 200
    except OSError:
        return False


def get(address: str, path: str, token: str) -> int:
    request = urllib.request.Request(f"http://{address}{path}", headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def statuses(answers) -> Counter:
    return Counter(status for status, _ in answers)


def test_two_hundred_clients_on_one_car_one_seat_one_slot_through_haproxy_one_winner_each(cluster, committed):
    buyers = data.users(200)
    (car,), event = data.cars(1), data.event(10)
    [[slot]] = data.slots(data.users(1, role="HOST"), per_host=1, capacity=1)
    races = {
        "car": ("POST", "/api/reservations", {"carId": car}),
        "seat": ("POST", f"/api/events/{event.pk}/seats/reserve", {"seatCodes": ["S1"]}),
        "slot": ("POST", "/api/bookings", {"slotId": slot}),
    }
    for name, (method, path, body) in races.items():
        cluster.wait_until(cluster.all_up, "every web process UP before the race")
        answers = send([cluster.address] * len(buyers), [(method, path, b.token, body) for b in buyers])
        assert statuses(answers) == Counter({201: 1, 409: 199}), name

    assert Reservation.objects.filter(car_id=car).count() == 1
    assert SeatClaim.objects.filter(event=event).count() == 1
    assert SlotBooking.objects.filter(slot_id=slot).count() == 1 and Slot.objects.get(pk=slot).booked == 1


def test_one_idempotency_key_sent_to_four_web_processes_at_once_has_one_effect(cluster, committed):
    (buyer,), (car,) = data.users(1), data.cars(1)
    answers = send(
        cluster.web,
        [("POST", "/api/reservations", buyer.token, {"carId": car})] * WEB,
        headers="Idempotency-Key: one-key-four-processes\r\n",
    )

    assert set(statuses(answers)) <= {201, 409}, answers
    assert all(body["error"]["code"] == "request_in_progress" for status, body in answers if status == 409)
    assert len({body["id"] for status, body in answers if status == 201}) == 1
    assert Reservation.objects.filter(car_id=car).count() == 1


def test_a_web_process_killed_in_a_burst_of_holds_costs_at_most_its_requests_in_flight(cluster, committed):
    buyers, cars = data.users(400), data.cars(400)
    victim = cluster.leaders()["web2"]  # `manage.py serve`, which is granian's main process
    answers: list[tuple[int, dict]] = []
    for wave in range(8):  # 8 waves of 50 holds, the second web process killed after the second
        part = slice(wave * 50, wave * 50 + 50)
        requests = [
            ("POST", "/api/reservations", b.token, {"carId": c}) for b, c in zip(buyers[part], cars[part], strict=True)
        ]
        answers += send([cluster.address] * 50, requests)
        if wave == 1:
            os.kill(victim, signal.SIGKILL)

    counted = statuses(answers)
    assert set(counted) <= {201, 503, 0}, counted  # a hold, HAProxy's 503 envelope, or a dropped connection
    assert all(body["error"]["code"] == "unavailable" for status, body in answers if status == 503)
    held = {body["carId"] for status, body in answers if status == 201}
    stored = set(Reservation.objects.filter(car_id__in=cars).values_list("car_id", flat=True))
    assert held <= stored and len(stored - held) <= counted[0] + counted[503]  # in flight: applied or not
    created = AuditEvent.objects.filter(subject_type="reservation", event_type="CREATED")
    assert created.filter(
        subject_id__in=[str(pk) for pk in Reservation.objects.filter(car_id__in=cars).values_list("pk", flat=True)]
    ).count() == len(stored)  # nothing half-written

    # The supervisor starts it again; HAProxy's checks put it back, and it takes traffic. Until the new one
    # runs, the dead one's orphaned worker may still answer (and pass HAProxy's check) on its port, then go:
    # wait for the new process itself.
    cluster.wait_until(
        lambda: cluster.leaders()["web2"] != victim and serving(cluster.web[1], buyers[0].token) and cluster.all_up(),
        "the killed web process started again, answering and back UP",
    )
    before = int(cluster.servers()["web2"]["stot"])
    for _ in range(2 * WEB):
        assert get(cluster.address, "/api/cars", buyers[0].token) == 200
    assert int(cluster.servers()["web2"]["stot"]) > before


def test_a_deleted_token_is_refused_by_every_web_process_within_the_cache_bound(cluster, committed):
    (user,) = data.users(1)
    assert [get(web, "/api/users/me", user.token) for web in cluster.web] == [200] * WEB  # every cache has it

    Token.objects.filter(key=user.token).delete()
    revoked = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < WEB and time.monotonic() - revoked < TOKEN_CACHE_SECONDS + 5:
        for web in cluster.web:
            if web not in refused and get(web, "/api/users/me", user.token) == 401:
                refused[web] = time.monotonic() - revoked
        time.sleep(0.05)

    assert set(refused) == set(cluster.web)
    assert max(refused.values()) <= TOKEN_CACHE_SECONDS + 0.5, refused


def test_the_throttle_counts_across_every_web_process_in_the_shared_cache(cluster, committed):
    attempts = REGISTRATIONS_PER_HOUR + WEB
    answers = [
        send([cluster.address], [("POST", "/api/users", "-", {"email": f"r{n}@example.com", "name": "R"})])[0]
        for n in range(attempts)  # one after the other: HAProxy sends them round robin to the four processes
    ]

    assert statuses(answers) == Counter({201: REGISTRATIONS_PER_HOUR, 429: attempts - REGISTRATIONS_PER_HOUR})
    assert all(body["error"]["code"] == "throttled" for status, body in answers if status == 429)


@short_and_long("seconds", 10, SOAK_SECONDS)
def test_two_beats_and_two_workers_expire_every_hold_once_and_deliver_every_event_once(
    cluster, committed, receiver, seconds
):
    """``seconds`` (10 in `make test`; CLUSTER_SOAK_SECONDS in the long run, 120 by default) of holds expiring —
    a backlog overdue at the start, more falling due all along — and of holds and confirmations through
    HAProxy, with a webhook endpoint answering 200: each hold expires once, each audit event reaches
    the receiver once, and the invariant monitor finds every invariant holding at the end."""
    # The bench's data is the bench's organisation's, and so are its events.
    endpoint = webhook_endpoint_create(organisation_id=data.organisation(), url=receiver.url, now=timezone.now())
    waves = int(seconds)  # a wave a second: HOLDS_PER_WAVE holds, the first two confirmed
    buyers, cars = data.users(waves * HOLDS_PER_WAVE + 50), data.cars(waves * HOLDS_PER_WAVE + 300)
    overdue = data.overdue_holds(300, buyers=buyers[-50:])
    now = timezone.now()
    Reservation.objects.bulk_create(  # due one after the other over the soak
        Reservation(
            car_id=car,
            buyer_id=buyers[-50 + n % 50].id,
            state="HELD",
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=seconds * (n + 1) / 300),
        )
        for n, car in enumerate(cars[-300:])
    )
    expiring = sum(overdue.values()) + 300

    answers: list[tuple[int, dict]] = []
    started = time.monotonic()
    for wave in range(waves):
        part = slice(wave * HOLDS_PER_WAVE, (wave + 1) * HOLDS_PER_WAVE)
        pairs = list(zip(buyers[part], cars[part], strict=True))
        held = send(
            [cluster.address] * len(pairs), [("POST", "/api/reservations", b.token, {"carId": c}) for b, c in pairs]
        )
        confirms = [
            ("POST", f"/api/reservations/{body['id']}/confirm", b.token, {})
            for (b, _), (status, body) in zip(pairs[:2], held[:2], strict=True)
            if status == 201
        ]
        answers += held + send([cluster.address] * len(confirms), confirms)
        time.sleep(max(0.0, started + wave + 1 - time.monotonic()))

    assert set(statuses(answers)) == {200, 201}, statuses(answers)  # holds 201, confirmations 200
    deadline = time.monotonic() + 60  # the last holds fall due at the end; the jobs catch up
    while time.monotonic() < deadline and (
        AuditEvent.objects.filter(event_type="EXPIRED").count() < expiring
        or AuditEvent.objects.filter(delivered_at__isnull=True).exists()
        or WebhookDelivery.objects.filter(status="PENDING").exists()
    ):
        time.sleep(0.2)

    twice = (
        AuditEvent.objects.values("subject_type", "subject_id", "event_type").annotate(n=Count("id")).filter(n__gt=1)
    )
    assert list(twice) == []  # two beats, two workers: no hold expired (or created, or confirmed) twice
    assert AuditEvent.objects.filter(event_type="EXPIRED").count() == expiring
    events = AuditEvent.objects.filter(occurred_at__gte=endpoint.created_at).count()
    delivered = WebhookDelivery.objects.filter(endpoint=endpoint, status="DELIVERED").count()
    received = Counter(r.id for r in receiver.received)
    assert delivered == events == len(received)  # every event delivered and received
    assert max(received.values()) == 1  # none twice
    report = invariants_check(now=timezone.now(), all_history=True)
    assert report.broken == [], describe(report)  # the invariant monitor finds everything holding


def listening_groups(port: int) -> set[int]:
    """The process groups of the processes listening on ``port`` (a server's workers share its socket)."""
    groups = set()
    for connection in psutil.net_connections("tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(connection.pid))
    return groups


def test_each_kind_of_process_killed_is_replaced_by_one_and_leaves_nothing_behind(cluster):
    """SIGKILL, at once: web1's `manage.py serve` (which is granian's main process: it execs granian), a
    granian worker of web3, Celery worker1's main process (its pool processes live on), beat1 and HAProxy.
    The supervisor ends what is left of each program before starting it again (granian respawns its own
    worker): then exactly one server listens on each port, and nothing of the killed ones runs."""
    before = cluster.leaders()
    granian_worker = psutil.Process(before["web3"]).children()[0].pid
    killed = ["web1", "worker1", "beat1", "haproxy"]
    assert all(group_members(before[name]) for name in killed)
    for pid in [granian_worker, *(before[name] for name in killed)]:
        os.kill(pid, signal.SIGKILL)

    def replaced() -> bool:
        now = cluster.leaders()
        return all(now[name] != before[name] for name in killed) and cluster.all_up()

    cluster.wait_until(replaced, "every killed program started again, every web process UP", seconds=120)
    after = cluster.leaders()
    assert left_running({name: before[name] for name in killed}) == {}
    assert after["web3"] == before["web3"] and granian_worker not in group_members(after["web3"])
    assert {name: listening_groups(port) for name, port in cluster.ports.items()} == {
        name: {after[name]} for name in cluster.ports
    }
    assert get(cluster.address, "/api/health/ready", "-") == 200


def test_sigterm_stops_the_whole_cluster_within_the_grace_period_even_with_hung_processes(cluster):
    """Runs last: it stops the module's cluster. A granian worker and a Celery worker are frozen (SIGSTOP:
    they cannot act on SIGTERM), as hung processes would be. SIGTERM to the main process alone, as a
    process manager sends it: the others stop at once, the frozen ones are killed at the end of the grace
    period, and nothing of any program's process group is left. (Ctrl-C again, which does not wait:
    test_supervisor.py, on `manage.py up`.)"""
    leaders = cluster.leaders()
    frozen = [psutil.Process(leaders["web2"]).children()[0], psutil.Process(leaders["worker1"])]
    for process in frozen:
        process.suspend()
    asked = time.monotonic()

    os.kill(cluster.process.pid, signal.SIGTERM)

    assert cluster.process.wait(GRACE + 10) == 0
    assert GRACE - 1 < time.monotonic() - asked < GRACE + 5
    assert left_running(leaders) == {}
