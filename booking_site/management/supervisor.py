"""Run several programs as one (``manage.py cluster``): their output interleaved, one line at a time, each
line prefixed with the program's name; a program that dies is started again after a pause (as systemd or
a container runtime would do in production); Ctrl-C or SIGTERM stops them all, SIGTERM first and SIGKILL
after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO


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
        self, programs: Sequence[Program], *, cwd: str, out: IO[str] = sys.stdout, grace: float = 10, pause: float = 1
    ) -> None:
        self.programs, self.cwd, self.out, self.grace, self.pause = list(programs), cwd, out, grace, pause
        self.width = max(len(program.name) for program in self.programs)
        self.stopping = threading.Event()
        self.write_lock = threading.Lock()

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
        """Start every program and watch them until a signal asks to stop; return 0."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stopping.set())
        for program in self.programs:
            self.start(program)
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            for program in self.programs:
                if program.restart_at is not None and now >= program.restart_at:
                    self.start(program)
                elif program.process is not None and program.restart_at is None and program.process.poll() is not None:
                    self.say(program.name, f"exited ({program.process.returncode}); starting again in {self.pause:g} s")
                    program.restart_at = now + self.pause
        self.stop()
        return 0

    def stop(self) -> None:
        running = [p.process for p in self.programs if p.process is not None and p.process.poll() is None]
        self.say(self.name, f"stopping {len(running)} programs")
        for process in running:
            self.signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.signal(process, signal.SIGKILL)
                process.wait()

    @staticmethod
    def signal(process: subprocess.Popen, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(process.pid, signum)
