import os
import shutil
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from ops import embedded
from ops.ports import refuse_taken_port
from ops.supervisor import GRACE, Program, Supervisor

DEPLOY = Path(settings.BASE_DIR) / "deploy"


def _count(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit():
        raise CommandError(f"{name}={value!r}: give a whole number.")
    return int(value)


class Command(BaseCommand):
    help = (
        "Run a production-shaped cluster on this machine (deploy/README.md): HAProxy on --port in front "
        "of --web web processes (each `manage.py serve` on the next ports, one granian worker each unless "
        "WEB_CONCURRENCY is set), --workers Celery workers and --beats Celery beats (2 rehearses running "
        "one by mistake), against DATABASE_URL and CELERY_BROKER_URL (the embedded PostgreSQL when unset). "
        "HAProxy checks /api/health/ready every second and takes a failing web process out. A program that dies "
        "is started again; Ctrl-C or SIGTERM stops all of it: SIGTERM to every program, SIGKILL to what is left "
        "after --grace seconds. Migrates first. Needs HAProxy (apt-get install haproxy)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address HAProxy listens on")
        parser.add_argument(
            "--port",
            type=int,
            default=_count("PORT", 8000),
            help="HAProxy's port (env PORT); web processes use the next ones",
        )
        parser.add_argument("--web", type=int, default=_count("WEB", 2), help="web processes (env WEB, default 2)")
        parser.add_argument("--workers", type=int, default=_count("WORKERS", 1), help="Celery workers (env WORKERS)")
        parser.add_argument("--beats", type=int, default=_count("BEATS", 1), help="Celery beats (env BEATS, default 1)")
        parser.add_argument(
            "--grace",
            type=int,
            default=_count("GRACE", GRACE),
            help=f"seconds the programs have to stop after SIGTERM before they are killed (env GRACE, default {GRACE})",
        )
        parser.add_argument(
            "--run-dir",
            help="where the HAProxy config and admin socket (haproxy.sock) go (default: a new temporary one)",
        )

    def handle(self, *args, host, port, web, workers, beats, grace, run_dir, **options):
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise CommandError("HAProxy is not installed: apt-get install haproxy (Debian, Ubuntu).")
        if web < 1 or workers < 0 or beats < 0:
            raise CommandError("Give at least one web process, and no negative counts.")
        if workers > 1 and not os.environ.get("CELERY_BROKER_URL"):
            raise CommandError(
                "More than one worker needs a real broker: the embedded one is a folder on this machine, "
                "which workers on other hosts cannot reach. Set CELERY_BROKER_URL (redis://127.0.0.1:6379/0)."
            )
        web_ports = [port + n for n in range(1, web + 1)]
        for each in (port, *web_ports):
            refuse_taken_port("127.0.0.1" if each != port else host, each)
        call_command("migrate", interactive=False, verbosity=1)
        call_command("collectstatic", interactive=False, verbosity=0)  # the admin's assets, as in production

        env = {
            "PYTHONUNBUFFERED": "1",
            "WEB_CONCURRENCY": os.environ.get("WEB_CONCURRENCY", "1"),
            # Plain HTTP on this machine: no TLS in front to redirect to (production sets it, deploy/README.md).
            "SECURE_SSL_REDIRECT": os.environ.get("SECURE_SSL_REDIRECT", "False"),
            # HAProxy adds X-Forwarded-For: the throttles count the address it saw (docs/contract.md §3.6).
            "NUM_PROXIES": os.environ.get("NUM_PROXIES", "1"),
        }
        if not os.environ.get("DATABASE_URL"):
            # This process owns the embedded server (and stops it on exit); the children just connect.
            env["DATABASE_URL"] = embedded.database_url(settings.DATABASES["default"])
        python, manage = sys.executable, os.path.join(settings.BASE_DIR, "manage.py")
        run = Path(run_dir or tempfile.mkdtemp(prefix="booking-site-cluster-"))
        run.mkdir(parents=True, exist_ok=True)
        config = run / "haproxy.cfg"
        servers = "".join(f"    server web{n} 127.0.0.1:{p}\n" for n, p in enumerate(web_ports, 1))
        config.write_text((DEPLOY / "haproxy.cfg").read_text() + servers)
        programs = [
            Program(
                "haproxy",
                [haproxy, "-db", "-f", str(config)],
                {
                    "BOOKING_SITE_BIND": f"{host}:{port}",
                    "BOOKING_SITE_DEPLOY": str(DEPLOY),
                    "BOOKING_SITE_HOST": "localhost",
                    "BOOKING_SITE_RUN": str(run),
                },
            ),
            *(
                Program(f"web{n}", [python, manage, "serve", "--host", "127.0.0.1", "--port", str(p)], env)
                for n, p in enumerate(web_ports, 1)
            ),
            *(
                Program(
                    f"worker{n}",
                    [
                        python,
                        "-m",
                        "celery",
                        "-A",
                        "config",
                        "worker",
                        "-n",
                        f"worker{n}@%h",
                        "--loglevel",
                        "INFO",
                    ],
                    env,
                )
                for n in range(1, workers + 1)
            ),
            *(
                Program(
                    f"beat{n}",
                    [python, "-m", "celery", "-A", "config", "beat", "--loglevel", "INFO", "--pidfile="],
                    env,
                )
                for n in range(1, beats + 1)
            ),
        ]
        self.stdout.write(
            self.style.SUCCESS(
                f"booking_site cluster: http://{host}:{port}/api/ through HAProxy to {web} web processes "
                f"(ports {web_ports[0]}-{web_ports[-1]}), {workers} workers, {beats} beats. Ctrl-C stops all of it."
            )
        )
        sys.exit(Supervisor(programs, cwd=str(settings.BASE_DIR), grace=grace).run())
