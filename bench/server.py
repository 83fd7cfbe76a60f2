"""The system under test, started the production way: ``manage.py serve`` (what ``make serve`` runs),
DEBUG off, on 127.0.0.1 — or ``manage.py cluster`` (HAProxy in front of several ``serve`` processes) for
the scale-out scenarios. Its whole process tree is measured and stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from bench import cpu

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 10


# The caps on what one user holds (docs/contract.md §2.7), raised past anything a run holds: a bench
# buyer holds many cars and seats at once, and the count behind each cap is still made and measured.
UNCAPPED = str(10**9)


def server_env(*, database_url: str, port: int, workers: int) -> dict[str, str]:
    """Production settings, with what a benchmark on loopback needs: plain http, quiet logs, no throttle,
    caps out of the way."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="False",
        SECURE_SSL_REDIRECT="False",
        LOG_LEVEL="WARNING",
        THROTTLE_ENABLED="False",
        RESERVATION_MAX_ACTIVE_HOLDS_PER_BUYER=UNCAPPED,
        EVENT_MAX_HELD_SEATS_PER_USER=UNCAPPED,
        WEB_CONCURRENCY=str(workers),
        HOST="127.0.0.1",
        PORT=str(port),
    )
    return env


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


class Server:
    """``with Server(...) as server:`` — up and answering /api/health inside, stopped after."""

    def __init__(self, *, database_url: str, port: int, workers: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.env = server_env(database_url=database_url, port=port, workers=workers)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server's process tree, now (granian's main process, which the serve command became, and its
        workers)."""
        return cpu.tree(self.process.pid) if self.process else []

    def workers(self) -> list[int]:
        """The processes that answer requests: the leaves of the tree."""
        leaves = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                if not psutil.Process(pid).children():
                    leaves.append(pid)
        return leaves

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(self.port)]

    def ports(self) -> list[int]:
        """Every port it listens on, each answering /api/health once it is up."""
        return [self.port]

    def __enter__(self) -> Server:
        for port in self.ports():
            if not port_is_free(port):
                raise SystemExit(f"port {port} is in use: choose another with --port (18000-18999)")
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        for port in self.ports():
            self._wait_healthy(port)
        return self

    def _wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        process = self.process
        assert process is not None  # started by __enter__
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}); see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not answer /api/health within {START_TIMEOUT_S} s; see {self.log_path}")

    def stop(self) -> None:
        """SIGTERM and wait; after STOP_TIMEOUT_S kill whatever is left of the tree."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = [psutil.Process(pid) for pid in self.pids() if psutil.pid_exists(pid)]
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"the server did not stop within {STOP_TIMEOUT_S} s: killing its processes", file=sys.stderr)
        _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S if self.process.poll() is not None else 0)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.process.wait()

    def __exit__(self, *exc) -> None:
        self.stop()


class Cluster(Server):
    """``manage.py cluster``: HAProxy on ``port`` in front of ``web`` web processes of one granian worker
    each, on the next ports; no Celery (the scenarios need none)."""

    RISE_S = 2.5  # HAProxy puts a process in rotation after two passed checks, 1 s apart (deploy/haproxy.cfg)

    def __init__(self, *, database_url: str, port: int, web: int, log_path: Path):
        super().__init__(database_url=database_url, port=port, workers=1, log_path=log_path)
        self.web = web

    def command(self) -> list[str]:
        options: dict[str, object] = {"--port": self.port, "--web": self.web, "--workers": 0, "--beats": 0}
        options["--run-dir"] = self.log_path.with_suffix("")
        return [sys.executable, "manage.py", "cluster", *(str(part) for item in options.items() for part in item)]

    def ports(self) -> list[int]:
        return [self.port + n for n in range(1, self.web + 1)]

    def __enter__(self) -> Cluster:
        super().__enter__()
        time.sleep(self.RISE_S)
        return self

    def haproxy(self) -> list[int]:
        pids = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).name() == "haproxy":
                    pids.append(pid)
        return pids
