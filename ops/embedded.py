"""Embedded defaults (docs/contract.md §8): what runs when no server is configured.

With no ``DATABASE_URL`` the project starts PostgreSQL from the ``pgserver`` wheel with its data in
``var/pgdata``; with no ``CELERY_BROKER_URL`` Celery uses kombu's filesystem transport in
``var/broker``. Both work across processes: every process (web, worker, beat, pytest) that imports the
settings attaches to the same server, and pgserver stops it when the last of them exits.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from time import monotonic
from urllib.parse import quote

from kombu.transport import filesystem
from kombu.utils.json import dumps

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


def broker(var_dir: Path) -> tuple[str, str, dict]:
    """Return (broker URL, transport class, transport options) for the filesystem broker in ``var/broker``."""
    folder = var_dir / "broker"
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # A host in the URL, so kombu does not warn "No hostname was supplied" on every start.
    return (
        "filesystem://localhost//",
        "ops.embedded:FilesystemTransport",
        {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        },
    )


class FilesystemChannel(filesystem.Channel):
    """kombu's filesystem channel, whose files appear whole (docs/decisions/0015-atomic-broker-files.md).

    kombu creates a message file under its final name and then writes it; a consumer in another thread
    or process may take and read it in between, find it empty, fail with a JSONDecodeError and lose the
    message. Here a file is written under a name no reader picks up and then renamed into place, which
    is atomic within a directory: a reader sees the whole message or no message.
    """

    def _put(self, queue, payload, **kwargs):  # type: ignore[override]  # as kombu's: "payload", the base says "message"
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's name: its order, its queue
        _write_then_move(Path(self.data_folder_out), name, dumps(payload), os.replace)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        # A new exchange table: written whole, then linked into place unless another binder was first;
        # an existing one is updated under kombu's own lock, as before.
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        if not file.exists():
            table = dumps([filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")])
            with contextlib.suppress(FileExistsError):
                return _write_then_move(self.control_folder, file.name, table, os.link)
        return super()._queue_bind(exchange, routing_key, pattern, queue)


def _write_then_move(folder: Path, name: str, text: str, move) -> None:
    """Write ``text`` to a hidden file in ``folder`` (kombu reads only names ending in the queue's or
    exchange's own suffix), then ``move`` it to ``name``; the hidden file never stays behind."""
    hidden = folder / f".{uuid.uuid4()}.tmp"
    try:
        hidden.write_text(text)
        move(hidden, folder / name)
    except FileExistsError:
        raise
    except OSError as exc:
        raise filesystem.ChannelError(f"Cannot add file {name!r} to {folder}") from exc
    finally:
        hidden.unlink(missing_ok=True)


class FilesystemTransport(filesystem.Transport):
    """The embedded broker's transport (``CELERY_BROKER_TRANSPORT``): kombu's, with FilesystemChannel."""

    Channel = FilesystemChannel


def database_url(database: dict) -> str:
    """DATABASES["default"] as a DATABASE_URL, so child processes reuse a server instead of attaching."""
    return f"postgres://{database['USER']}@{quote(database['HOST'], safe='')}:{database['PORT']}/{database['NAME']}"
