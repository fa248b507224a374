"""The machine's PostgreSQL for integration tests: an engine or a skip (a failure in CI); scratch DBs."""

from __future__ import annotations

import re

import sqlalchemy as sa

from tests.conftest import skip_or_fail

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
# The maintenance database: CREATE/DROP DATABASE cannot run inside the database they name.
PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"

_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def postgres_engine(url: str = PG_URL) -> sa.Engine:
    """An engine that has connected once; skip (or fail under FLYWHEEL_REQUIRE_SERVICES=1) when it cannot."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError:
        engine.dispose()
        skip_or_fail("PostgreSQL not reachable at 127.0.0.1:5432")
    return engine


def database_url(name: str, driver: str = "psycopg2") -> str:
    """The SQLAlchemy URL of database `name` on the machine's PostgreSQL, with the given driver."""
    return f"postgresql+{driver}://postgres@127.0.0.1:5432/{name}"


def _checked(name: str) -> str:
    # Database names cannot be bound as parameters: only plain lower-case identifiers get this far.
    if not _DATABASE_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


def create_database(name: str) -> None:
    """Create an empty database `name` (skip, or fail in CI, when PostgreSQL is not there)."""
    engine = postgres_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                sa.text(f'CREATE DATABASE "{_checked(name)}"')
            )
    finally:
        engine.dispose()


def drop_database(name: str) -> None:
    """Drop database `name` if it exists, ending the sessions servers left open on it first."""
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)'))
    finally:
        engine.dispose()


def table_names(name: str) -> set[str]:
    """The tables of database `name` (all schemas but the system ones)."""
    engine = sa.create_engine(database_url(name), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
                )
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()
