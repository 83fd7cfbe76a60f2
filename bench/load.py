"""The load clients, each run as its own process and measured by its rusage: wrk with
``lua/tickets.lua`` for throughput, ``bench.burst`` for the hot-resource races. Both read the same
ticket file (one request per line: method, path, token, JSON body) and report in the same shape."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "tickets.lua"
WRK_THREADS = 2  # one per core of the reference machine; connections are spread over them


@dataclass(frozen=True)
class Ticket:
    method: str
    path: str
    token: str  # "-": no Authorization header (the seeds)
    body: dict | None = None

    def line(self) -> str:
        return "\t".join([self.method, self.path, self.token, json.dumps(self.body) if self.body is not None else ""])


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[int, int]
    socket_errors: int
    client_cpu_s: float
    extra: dict = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Finished:
    """A child process that ran to its end: its output, CPU (user + system) and peak memory."""

    returncode: int
    output: str
    cpu_s: float
    max_rss_mb: float
    wall_s: float


def run_measured(command: list[str], *, env: dict | None = None, cwd: Path | None = None) -> Finished:
    """Run ``command`` to its end, taking its resource usage from ``wait4`` (exact, and its own)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    assert process.stdout is not None  # stdout=PIPE
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        returncode=process.returncode,
        output=output,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        wall_s=time.perf_counter() - started,
    )


def write_tickets(path: Path, tickets: list[Ticket]) -> Path:
    path.write_text("".join(ticket.line() + "\n" for ticket in tickets))
    return path


def parse_report(output: str) -> dict:
    """The ``BENCH {json}`` line both clients print."""
    for line in output.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line.removeprefix("BENCH "))
    raise RuntimeError(f"the load client printed no BENCH line:\n{output[-2000:]}")


def to_load(report: dict, *, client_cpu_s: float) -> Load:
    return Load(
        requests=report["requests"],
        seconds=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p95_ms=report["p95_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        statuses={int(status): n for status, n in report["statuses"].items()},
        socket_errors=report["socket_errors"],
        client_cpu_s=client_cpu_s,
    )


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("make bench needs wrk, which is not installed: install it: apt-get install wrk")
    return found


def run_wrk(
    *, url: str, tickets: Path, connections: int, seconds: float, once: bool, limit: int, key_prefix: str | None
) -> Load:
    """Drive ``url`` with the tickets for ``seconds`` (and at most ``limit`` requests)."""
    threads = min(WRK_THREADS, connections)
    command = [wrk_path(), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s"]
    command += ["-s", str(LUA), url, "--", str(tickets), str(threads), "once" if once else "cycle"]
    command += [str(max(1, limit // threads)), key_prefix or "-"]
    finished = run_measured(command)
    if finished.returncode != 0:
        raise RuntimeError(f"wrk failed ({finished.returncode}):\n{finished.output[-2000:]}")
    report = parse_report(finished.output)
    load = to_load(report, client_cpu_s=finished.cpu_s)
    load.extra["stopped_threads"] = report.get("stopped_threads", 0)
    return load


def run_burst(*, address: str, tickets: Path) -> Load:
    """Release one request per ticket at once (``bench.burst``); the client's CPU is its own measure of
    the burst, without the interpreter's start."""
    finished = run_measured([sys.executable, "-m", "bench.burst", address, str(tickets)], cwd=LUA.parent.parent.parent)
    if finished.returncode != 0:
        raise RuntimeError(f"the burst client failed ({finished.returncode}):\n{finished.output[-2000:]}")
    report = parse_report(finished.output)
    load = to_load(report, client_cpu_s=report["cpu_s"])
    load.extra["outcomes"] = report.get("outcomes", {})
    return load
