"""The machine's PostgreSQL for integration tests: an engine, or a skip (a failure in CI)."""

from __future__ import annotations

import sqlalchemy as sa

from tests.conftest import skip_or_fail

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


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
