"""The metadata index: patients, studies, series and instances.

``Index`` is the protocol the archive core depends on; ``SqliteIndex`` is the
embedded backend and ``PostgresIndex`` the one several processes share.
``open_index`` opens whichever an index URL names. Backends never import
``pacs.core``.
"""

from __future__ import annotations

from pathlib import Path

from pacs.index.base import Index, InstanceRecord, StoredInstance
from pacs.index.postgres import PostgresIndex
from pacs.index.schema import ATTRIBUTES, Attribute, Kind, Level
from pacs.index.sqlite import SqliteIndex


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_index(url: str, *, pool_size: int = 16) -> Index:
    """``sqlite:///path``, a plain path, or ``postgresql://user@host:port/database``."""
    if is_postgres_url(url):
        return PostgresIndex(url, pool_size=pool_size)
    return SqliteIndex(sqlite_path(url))


def sqlite_path(url: str) -> Path:
    if url.startswith("sqlite:///"):
        return Path("/" + url[len("sqlite:///") :].lstrip("/"))
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :])
    return Path(url)


__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "Index",
    "InstanceRecord",
    "Kind",
    "Level",
    "PostgresIndex",
    "SqliteIndex",
    "StoredInstance",
    "is_postgres_url",
    "open_index",
    "sqlite_path",
]
