import os
import signal
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from booking_site import embedded


class Command(BaseCommand):
    help = (
        "Run the production web server in the foreground (gunicorn, configured by gunicorn.conf.py), "
        "listening on --host/--port (env HOST, PORT; default 0.0.0.0:8000) with WEB_CONCURRENCY worker "
        "processes. It does not migrate or collect static files: do that first (README, 'Running in "
        "production'). SIGTERM or Ctrl-C stops it. With no DATABASE_URL this process owns the embedded "
        "PostgreSQL, which stops with it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="address to listen on")
        parser.add_argument(
            "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="port to listen on (env PORT)"
        )

    def handle(self, *args, host, port, **options):
        env = {**os.environ, "GUNICORN_BIND": f"{host}:{port}"}
        if not os.environ.get("DATABASE_URL"):
            env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "booking_site.wsgi"], env=env)
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            sys.exit(server.wait())
        except KeyboardInterrupt:  # the terminal sent SIGINT to the server too; let it finish
            sys.exit(server.wait())
