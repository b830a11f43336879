"""Index backends for the integration suites: each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pacs.index import PostgresIndex, SqliteIndex
from pacs.index.base import Index

INDEX_KINDS = ["sqlite", "postgres"]


@dataclass
class IndexLocation:
    """Where one test's index lives: a SQLite file or a PostgreSQL database."""

    kind: str
    target: str

    def open(self) -> Index:
        if self.kind == "postgres":
            return PostgresIndex(self.target)
        return SqliteIndex(self.target)

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        """Run SQL on a connection of its own (what another process would see)."""
        if self.kind == "postgres":
            with psycopg.connect(self.target, autocommit=True) as db:
                cursor = db.execute(statement.encode())
                return list(cursor.fetchall()) if cursor.description else []
        import sqlite3

        with sqlite3.connect(self.target) as db:
            rows = db.execute(statement).fetchall()
        db.close()
        return rows


@pytest.fixture(params=INDEX_KINDS)
def index_location(request: pytest.FixtureRequest, tmp_path: Path) -> IndexLocation:
    if request.param == "postgres":
        return IndexLocation("postgres", request.getfixturevalue("postgres_url"))
    return IndexLocation("sqlite", str(tmp_path / "index.sqlite"))


@pytest.fixture
def opened(index_location: IndexLocation) -> Iterator[Index]:
    index = index_location.open()
    yield index
    index.close()
