import os
import signal
import subprocess
import sys
import tempfile

from django.conf import settings
from django.core.management.base import BaseCommand

from booking_site import embedded
from booking_site.management.ports import refuse_taken_port


class Command(BaseCommand):
    help = (
        "Run the production web server in the foreground: granian serving booking_site.wsgi with "
        "WEB_CONCURRENCY worker processes of WEB_THREADS threads each, HTTP keep-alive, respawning a "
        "worker that dies (docs/decisions/0006-request-floor.md); /metrics adds up the workers' counters "
        "(in PROMETHEUS_MULTIPROC_DIR, a fresh temporary directory unless set). Listens on --host/--port "
        "(env HOST, PORT; default 0.0.0.0:8000); WEB_ACCESS_LOG=true writes an access log. It does "
        "not migrate or collect static files: do that first (README, 'Running in production'). SIGTERM "
        "or Ctrl-C stops it gracefully. With no DATABASE_URL this process owns the embedded PostgreSQL, "
        "which stops with it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on")
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port to listen on (env PORT)"
        )

    def handle(self, *args, host, port, **options):
        refuse_taken_port(host, port)
        env = dict(os.environ)
        if not os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
        if "PROMETHEUS_MULTIPROC_DIR" not in env:  # /metrics adds up every worker's counters
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="booking-site-metrics-")
        argv = [
            *(sys.executable, "-m", "granian", "--interface", "wsgi", "--no-ws"),
            *("--host", host, "--port", str(port)),
            *("--workers", str(settings.WEB_CONCURRENCY), "--blocking-threads", str(settings.WEB_THREADS)),
            "--respawn-failed-workers",
            "--access-log" if settings.WEB_ACCESS_LOG else "--no-access-log",
            "booking_site.wsgi:application",
        ]
        server = subprocess.Popen(argv, env=env, cwd=settings.BASE_DIR)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            sys.exit(server.wait())
        except KeyboardInterrupt:  # the terminal sent SIGINT to the server too; let it finish
            sys.exit(server.wait())
