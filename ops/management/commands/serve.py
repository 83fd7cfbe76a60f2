import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable

from django.conf import settings
from django.core.management.base import BaseCommand

from ops import embedded
from ops.ports import refuse_taken_port

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Command(BaseCommand):
    help = (
        "Run the production web server in the foreground: granian serving config.wsgi with "
        "WEB_CONCURRENCY worker processes of WEB_THREADS threads each, HTTP keep-alive, respawning a "
        "worker that dies (docs/decisions/0006-request-floor.md); /metrics adds up the workers' counters "
        "(in PROMETHEUS_MULTIPROC_DIR, a fresh temporary directory unless set). Listens on --host/--port "
        "(env HOST, PORT; default 0.0.0.0:8000); WEB_ACCESS_LOG=true writes an access log. It does "
        "not migrate or collect static files: do that first (README, 'Running in production'). This "
        "process becomes granian's main process (docs/decisions/0020-serve-execs-granian.md); SIGTERM or "
        "Ctrl-C stops it gracefully. With no DATABASE_URL it stays granian's parent instead, owning the "
        "embedded PostgreSQL, which stops with it; granian dies with it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on")
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port to listen on (env PORT)"
        )

    def handle(self, *args, host, port, **options):
        refuse_taken_port(host, port)
        env = dict(os.environ)
        if "PROMETHEUS_MULTIPROC_DIR" not in env:  # /metrics adds up every worker's counters
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="booking-site-metrics-")
        argv = [
            *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws"),
            *("--host", host, "--port", str(port)),
            *("--workers", str(settings.WEB_CONCURRENCY), "--blocking-threads", str(settings.WEB_THREADS)),
            "--respawn-failed-workers",
            "--access-log" if settings.WEB_ACCESS_LOG else "--no-access-log",
            "config.wsgi:application",
        ]
        os.chdir(settings.BASE_DIR)
        if os.environ.get("DATABASE_URL"):
            # Become granian (ADR 0020): whoever started this command signals, watches and restarts the
            # server itself, not a wrapper that could die and leave the server running behind it.
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, argv, env)
        # This process owns the embedded PostgreSQL and stops it when it exits, after granian: it stays,
        # and granian is told to stop when it dies, however it dies.
        env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
        server = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent(os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            sys.exit(server.wait())
        except KeyboardInterrupt:  # the terminal sent SIGINT to the server too; let it finish
            sys.exit(server.wait())


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child SIGTERM when ``parent`` dies, however it dies (Linux's
    parent-death signal; elsewhere there is none), and a child whose parent died before it asked stops."""
    prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None  # looked up before the fork

    def ask() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return ask
