"""Run several programs as one (``manage.py up``, ``manage.py cluster``): their output interleaved, one line
at a time, each line prefixed with the program's name; a program that dies is started again after a pause
(as systemd or a container runtime would do in production), once what is left of it is gone; Ctrl-C or
SIGTERM stops them all, SIGTERM first and SIGKILL after a grace period, or at once when asked again.

Each program runs in its own process group (its own session), and the supervisor always signals the whole
group: a server's workers, a Celery worker's pool, anything a program started goes with it."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

import psutil

# A stop signal this long after the first forces the stop (SIGKILL now). Closer together, two signals are
# one stop asked twice: Ctrl-C in a terminal reaches `make` and this process at once, and make passes its
# own on; a process manager signals the whole process group.
FORCE_AFTER = 1.0
GRACE = 10  # seconds a program has to stop after SIGTERM, by default
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Program:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    restart_at: float | None = None


class Supervisor:
    name = "cluster"  # the label of the supervisor's own lines (`up` says "up")

    def __init__(
        self,
        programs: Sequence[Program],
        *,
        cwd: str,
        out: IO[str] = sys.stdout,
        grace: float = GRACE,
        pause: float = 1,
        tick: float = 0.2,
    ) -> None:
        self.programs, self.cwd, self.out, self.grace, self.pause = list(programs), cwd, out, grace, pause
        self.tick = tick  # how often the programs are looked at; a signal is read at once
        self.width = max(len(program.name) for program in self.programs)
        self.write_lock = threading.Lock()
        self.wakeup: int | None = None  # the pipe's read end the signals are written to
        self.asked: list[float] = []  # when each stop signal was read, first first

    def say(self, name: str, line: str) -> None:
        with self.write_lock:
            self.out.write(f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | {line.rstrip()}\n")
            self.out.flush()

    def start(self, program: Program) -> None:
        program.process = subprocess.Popen(
            program.argv,
            cwd=self.cwd,
            env={**os.environ, **program.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a signal reaches its children too
        )
        program.restart_at = None
        self.say(program.name, f"started (pid {program.process.pid})")
        stream = program.process.stdout
        threading.Thread(target=self.relay, args=(program.name, stream), daemon=True).start()

    def relay(self, name: str, stream: IO[str] | None) -> None:
        for line in stream or ():
            self.say(name, line)

    def run(self) -> int:
        """Start every program and watch them until a signal asks to stop; stop them all and return 0."""
        with self.listening():
            for program in self.programs:
                if self.wait(0):
                    break
                self.start(program)
            while not self.wait(self.tick):
                self.watch(time.monotonic())
            self.stop()
        return 0

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """Take SIGINT and SIGTERM through a pipe. A Python signal handler runs in the main thread between
        any two bytecodes, inside another handler too: one that took a lock (threading.Event.set does)
        would wait for ever on itself when a second signal came while it held it. Here the handler does
        nothing; the interpreter's own C handler writes each signal's number into the pipe
        (signal.set_wakeup_fd), which the main loop reads."""
        read, write = os.pipe()
        for end in (read, write):
            os.set_blocking(end, False)
        self.wakeup, self.asked = read, []
        previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        previous = {signum: signal.signal(signum, _nothing) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(read)
            os.close(write)
            self.wakeup = None

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a stop signal (less when one comes); whether one has come."""
        assert self.wakeup is not None
        if select.select([self.wakeup], [], [], seconds)[0]:
            with contextlib.suppress(BlockingIOError):
                read = os.read(self.wakeup, 64)
                self.asked += [time.monotonic()] * sum(signum in STOP_SIGNALS for signum in read)
        return bool(self.asked)

    def watch(self, now: float) -> None:
        for program in self.programs:
            process = program.process
            if process is None:
                continue
            if program.restart_at is not None:
                if now < program.restart_at:
                    continue
                if group_members(process.pid):  # what ignored the SIGTERM; started again once it is gone
                    self.signal(process, signal.SIGKILL)
                else:
                    self.start(program)
            elif process.poll() is not None:
                self.say(program.name, f"exited ({process.returncode}); starting again in {self.pause:g} s")
                # What it started lives on (a server's workers still bound to its port): end it first.
                self.signal(process, signal.SIGTERM)
                program.restart_at = now + self.pause

    def stop(self) -> None:
        """SIGTERM to every program's process group; SIGKILL to what is left of them after the grace period,
        or at once when a stop signal comes FORCE_AFTER seconds after the first. Returns when they are gone."""
        running = [p.process for p in self.programs if p.process is not None and alive(p.process)]
        self.say(self.name, f"stopping {len(running)} programs (Ctrl-C again kills them at once)")
        for process in running:
            self.signal(process, signal.SIGTERM)
        kill_at: float | None = time.monotonic() + self.grace
        while running := [process for process in running if alive(process)]:
            forced = self.asked[-1] >= self.asked[0] + FORCE_AFTER
            if kill_at is not None and (forced or time.monotonic() >= kill_at):
                self.say(self.name, f"killing {len(running)} programs")
                for process in running:
                    self.signal(process, signal.SIGKILL)
                kill_at = None
            self.wait(min(self.tick, 0.05))

    @staticmethod
    def signal(process: subprocess.Popen, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(process.pid, signum)


def _nothing(signum: int, frame: object) -> None:
    """The stop signals' Python handler: the signal is read from the wakeup pipe (Supervisor.listening)."""


def alive(process: subprocess.Popen) -> bool:
    """Whether the program still runs: its first process, or any other of its process group."""
    return process.poll() is None or bool(group_members(process.pid))


def group_members(pgid: int) -> list[int]:
    """The processes of a process group that run. A zombie does not: it only waits for its parent to read
    its exit status, and an orphan's parent is init, which in a container may never do so."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    members = []
    for pid in psutil.pids():
        with contextlib.suppress(OSError, psutil.Error):  # gone meanwhile
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.append(pid)
    return members
