import os
import sys
import threading
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from ops import embedded
from ops.ports import refuse_taken_port
from ops.supervisor import Program, Supervisor


class Command(BaseCommand):
    help = (
        "Run the whole system on this machine: apply migrations, load the demo data once, then start the "
        "web server, a Celery worker and Celery beat together, with their output interleaved (one that dies "
        "is started again), and print the URLs once the web server answers. Ctrl-C stops all of them (and "
        "the embedded PostgreSQL, when that is what runs) "
        "and exits 0. Uses DATABASE_URL and CELERY_BROKER_URL when set, the embedded defaults otherwise."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address the web server listens on")
        parser.add_argument(
            "--port",
            type=int,
            default=int(os.environ.get("PORT", "8000")),
            help="port the web server listens on (env PORT)",
        )
        parser.add_argument("--no-demo", action="store_true", help="do not load the demo data set")

    def handle(self, *args, host, port, no_demo, **options):
        refuse_taken_port(host, port)
        call_command("migrate", interactive=False, verbosity=1)
        if not no_demo:
            call_command("seed_demo")
        base, database = f"http://{host}:{port}", settings.DATABASES["default"]
        banner = [
            "booking_site is up:",
            f"  admin     {base}/admin/",
            f"  API       {base}/api/",
            f"  API docs  {base}/api/docs/",
            f"  database  {database['HOST'] or 'localhost'}/{database['NAME']}",
            f"  broker    {settings.CELERY_BROKER_URL}",
            f"Try: curl -X POST {base}/api/reservations -H 'Authorization: Token <token>' "
            f"-H 'Content-Type: application/json' -d '{{\"carId\": 1}}'",
            "Ctrl-C stops everything.",
        ]
        env = {**os.environ, "DEBUG": os.environ.get("DEBUG", "True"), "PYTHONUNBUFFERED": "1"}
        if not os.environ.get("DATABASE_URL"):
            # This process owns the embedded server (and stops it on exit); the children just connect.
            env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
        python, manage = sys.executable, os.path.join(settings.BASE_DIR, "manage.py")
        celery = [python, "-m", "celery", "-A", "config"]
        programs = [
            Program("web", [python, manage, "runserver", f"{host}:{port}"], env),
            Program(
                "worker", [*celery, "worker", "--loglevel", "INFO", "--pool", "threads", "--concurrency", "2"], env
            ),
            Program("beat", [*celery, "beat", "--loglevel", "INFO", "--pidfile="], env),
        ]
        # Ctrl-C (or a SIGTERM) is how one stops this command: once the children are stopped, that is a
        # clean exit, and `make run` reports no error. A child that dies is started again.
        supervisor = Supervisor(programs, cwd=str(settings.BASE_DIR))
        supervisor.name = "up"
        threading.Thread(target=self.announce, args=(supervisor, base, banner), daemon=True).start()
        sys.exit(supervisor.run())

    def announce(self, supervisor: Supervisor, base: str, banner: list[str]) -> None:
        """Print the URLs once the web server answers: it takes seconds to start, and a URL printed before
        then is refused when followed at once."""
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/", timeout=2).close()
            except urllib.error.HTTPError:
                break  # it answers, whatever it says
            except OSError:
                time.sleep(0.2)
                continue
            break
        for line in banner:
            supervisor.say(supervisor.name, self.style.SUCCESS(line))
