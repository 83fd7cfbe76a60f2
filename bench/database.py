"""The bench database: a fresh ``<configured name>_bench`` on the configured PostgreSQL server (the
embedded one when DATABASE_URL is unset), and the server processes that serve it, for CPU accounting."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, unquote

import environ
import psutil
import psycopg
from psycopg import sql

from ops import embedded

VAR_DIR = Path(__file__).resolve().parent.parent / "var"  # where the embedded server keeps its data


@dataclass(frozen=True)
class Database:
    name: str
    user: str
    password: str
    host: str
    port: str

    @property
    def url(self) -> str:
        """As DATABASE_URL: what the server, the expiry job and pgbench are given."""
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"postgres://{auth}@{quote(self.host, safe='')}:{self.port}/{quote(self.name, safe='')}"

    def connect(self, dbname: str | None = None, **kwargs) -> psycopg.Connection:
        return psycopg.connect(
            dbname=dbname or self.name,
            user=self.user,
            password=self.password or None,
            host=self.host,
            port=self.port,
            **kwargs,
        )


def configured() -> Database:
    """The database the project is configured with; with no DATABASE_URL, the embedded server is
    started (it stops when this process exits)."""
    url = os.environ.get("DATABASE_URL")
    return from_url(url) if url else _from_config(embedded.database(VAR_DIR))


def from_url(url: str) -> Database:
    return _from_config(environ.Env.db_url_config(url))


def _from_config(config: dict) -> Database:
    return Database(
        name=config["NAME"],
        user=config.get("USER") or "postgres",
        password=config.get("PASSWORD") or "",
        host=unquote(str(config.get("HOST") or "127.0.0.1")),
        port=str(config.get("PORT") or 5432),
    )


def bench_of(database: Database) -> Database:
    return replace(database, name=f"{database.name}_bench")


def recreate(database: Database) -> None:
    """Drop the bench database if a previous run left it, and create it empty."""
    drop(database)
    with database.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database.name)))


def drop(database: Database) -> None:
    with database.connect("postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database.name)))


class PostgresProcesses:
    """The PostgreSQL processes that work for the bench database: its backends, the server's
    background processes and the postmaster — not the backends of other databases on a shared server.
    Empty when the server is not on this machine."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None  # the query returns one row
        backend = row[0]
        self.postmaster = None
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(backend)
            if "postgres" in " ".join(process.cmdline()):
                self.postmaster = process.ppid()

    @property
    def local(self) -> bool:
        return self.postmaster is not None

    def __call__(self) -> list[int]:
        if not self.local:
            return []
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR backend_type <> 'client backend'"
        ).fetchall()
        return [self.postmaster, *(pid for (pid,) in rows)]
