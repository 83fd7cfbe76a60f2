"""Embedded defaults (docs/contract.md §8): what runs when no server is configured.

With no ``DATABASE_URL`` the project starts PostgreSQL from the ``pgserver`` wheel with its data in
``var/pgdata``; with no ``CELERY_BROKER_URL`` Celery uses kombu's filesystem transport in
``var/broker``. Both work across processes: every process (web, worker, beat, pytest) that imports the
settings attaches to the same server, and pgserver stops it when the last of them exits.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import quote

DATABASE_NAME = "booking_site"


def database(var_dir: Path) -> dict:
    """Start (or attach to) the embedded PostgreSQL server and return Django's DATABASES entry."""
    var_dir.mkdir(parents=True, exist_ok=True)
    # pgserver keeps its inter-process lock in the user runtime dir; keep it beside the data.
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = var_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        runtime.chmod(0o700)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)

    import pgserver  # imported late: only the embedded path needs it

    server = pgserver.get_server(var_dir / "pgdata", cleanup_mode="stop")
    info = server.get_postmaster_info()
    _ensure_database(info.socket_dir, info.port)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DATABASE_NAME,
        "USER": "postgres",
        "HOST": str(info.socket_dir),
        "PORT": str(info.port),
    }


def _ensure_database(socket_dir: Path, port: int) -> None:
    import psycopg
    from psycopg import errors

    with psycopg.connect(host=str(socket_dir), port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            with contextlib.suppress(errors.DuplicateDatabase):  # another process was first
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def broker(var_dir: Path) -> tuple[str, dict]:
    """Return (broker URL, transport options) for kombu's filesystem transport in ``var/broker``."""
    folder = var_dir / "broker"
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # A host in the URL, so kombu does not warn "No hostname was supplied" on every start.
    return "filesystem://localhost//", {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }


def database_url(database: dict) -> str:
    """DATABASES["default"] as a DATABASE_URL, so child processes reuse a server instead of attaching."""
    return f"postgres://{database['USER']}@{quote(database['HOST'], safe='')}:{database['PORT']}/{database['NAME']}"
