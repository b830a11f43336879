"""The embedded index on SQLite.

One writer connection serialised by a lock (SQLite allows a single writer at a
time anyway) and one reader connection per thread; WAL mode lets readers run
while an ingest commits. ``synchronous=FULL`` makes every commit durable before
the archive acknowledges the instance.
"""

from __future__ import annotations

import fcntl
import functools
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pacs.index import sql
from pacs.index.access_sql import SqlAccessStore
from pacs.index.base import InstanceRecord, StoredInstance
from pacs.index.query import Query
from pacs.index.schema import Level
from pacs.index.sql import SCHEMA_VERSION, TABLES, Clause, Dialect, columns, wildcard_regex
from pacs.types import ArchiveStatistics

_IDLE_READERS = 8  # connections kept for streamed results (see ``find``)


def _glob(column: str, pattern: str) -> Clause:
    # GLOB is case-sensitive, as DICOM matching is, and uses an index on a
    # literal prefix. Its only other special character is '['.
    return f"{column} GLOB ?", [pattern.replace("[", "[[]")]


def _any_value_glob(column: str, pattern: str) -> Clause:
    # GLOB's * would run across the backslash into the next value.
    return f"dicom_any_value_matches({column}, ?)", [pattern]


SQLITE = Dialect(
    name="sqlite",
    param="?",
    text="TEXT",
    integer="INTEGER",
    bigint="INTEGER",
    binary="BLOB",
    primary_key="INTEGER PRIMARY KEY",
    unlimited=-1,
    # Unary + keeps SQLite from walking the primary key to avoid the sort,
    # which would scan every row instead of using the search indexes.
    order_prefix="+",
    wildcard=_glob,
    any_value_matches=_any_value_glob,
    contains_value="instr({haystack}, {needle}) > 0",
)


def _select(query: Query, count: bool = False) -> Clause:
    return sql.select(query, SQLITE, count)


class _PendingAdd:
    __slots__ = ("done", "error", "existing", "record")

    def __init__(self, record: InstanceRecord) -> None:
        self.record = record
        self.done = False
        self.existing: StoredInstance | None = None
        self.error: Exception | None = None


class SqliteIndex(SqlAccessStore):
    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._in_memory = self._path == ":memory:"
        self._write_lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingAdd] = []
        self._local = threading.local()
        self._idle_readers: list[sqlite3.Connection] = []
        self._lock_file = None if self._in_memory else open(self._path + ".writer-lock", "ab")
        self._writer = self._connect(writer=True)
        self._at_once_lock = threading.Lock()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise
        self._at_once: sqlite3.Connection | None = None
        if not self._in_memory:
            self._at_once = self._connect()
            self._at_once.execute("PRAGMA busy_timeout=0")

    def _connect(self, writer: bool = False) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30
        )
        connection.row_factory = sqlite3.Row
        connection.create_function(
            "dicom_any_value_matches", 2, _any_value_matches, deterministic=True
        )
        if writer and not self._in_memory:
            # WAL is a property of the file: set once by the writer, under the
            # cross-process lock, never by readers (which could then wait on it).
            with self._process_lock():
                connection.execute("PRAGMA journal_mode=WAL")
        if not writer:
            connection.execute("PRAGMA query_only=1")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=30000")
        return connection

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"index schema version {version} is newer than this server ({SCHEMA_VERSION})"
                )
            for number, _, statements in sql.migrations(SQLITE):
                if number > version:
                    for statement in statements:
                        if callable(statement):
                            statement(db)
                        else:
                            db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock, self._process_lock():
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    @contextmanager
    def _process_lock(self) -> Iterator[None]:
        """Serialise writers of several processes (DICOM workers, ``pacs import``).

        SQLite would serialise them too, but a writer that finds the database
        busy sleeps in steps of up to 100 ms; a blocking ``flock`` hands over
        the moment the other process commits.
        """
        if self._lock_file is None:
            yield
            return
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _reader(self) -> sqlite3.Connection:
        if self._in_memory:
            return self._writer
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            self._local.connection = connection
        return connection

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._in_memory:
            with self._write_lock:
                yield self._writer
        else:
            yield self._reader()

    # -- the access store's two primitives (pacs.index.access_sql) ----------

    def _access_rows(self, statement: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        with self._reading() as db:
            return list(db.execute(statement, tuple(params)).fetchall())

    def _access_write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        with self._transaction() as db:
            return [db.execute(s, tuple(p)).rowcount for s, p in statements]

    # -- reads ---------------------------------------------------------------

    _STORED_SELECT = """
        SELECT st.study_instance_uid, se.series_instance_uid, i.sop_instance_uid,
               i.sop_class_uid, i.transfer_syntax_uid, i.blob_key, i.size, i.content_hash,
               i.stored_at
        FROM instances i
        JOIN series se ON se.pk = i.series_pk
        JOIN studies st ON st.pk = se.study_pk
        WHERE i.sop_instance_uid = ?
    """

    def find_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with self._reading() as db:
            return self._find(db, sop_instance_uid)

    def _find(self, db: sqlite3.Connection, sop_instance_uid: str) -> StoredInstance | None:
        row = db.execute(self._STORED_SELECT, (sop_instance_uid,)).fetchone()
        return StoredInstance(*row) if row else None

    def entity(self, level: Level, uid: str) -> dict[str, Any] | None:
        key = {
            Level.PATIENT: "patient_id",
            Level.STUDY: "study_instance_uid",
            Level.SERIES: "series_instance_uid",
            Level.IMAGE: "sop_instance_uid",
        }[level]
        with self._reading() as db:
            row = db.execute(f"SELECT * FROM {TABLES[level]} WHERE {key} = ?", (uid,)).fetchone()
        return dict(row) if row else None

    def find(self, query: Query) -> Iterator[dict[str, Any]]:
        """Rows of ``query.columns`` for every entity matching ``query``, lazily.

        A result being read holds its own connection (and so its own snapshot of
        the database), so that the reading thread's other queries, between two
        rows, still see what was committed since.
        """
        sql, params = _select(query)
        if self._in_memory:
            yield from self._find_in_memory(sql, params)
            return
        connection = self._borrow_reader()
        cursor = connection.execute(sql, params)
        try:
            while rows := cursor.fetchmany(256):
                for row in rows:
                    yield dict(row)
        finally:
            cursor.close()
            self._return_reader(connection)

    def find_now(self, query: Query) -> list[dict[str, Any]] | None:
        """An in-process read, on a connection that never waits for a lock
        (busy timeout 0): a point lookup of the B-tree takes tens of
        microseconds, less than the hop to a worker thread it saves. In WAL
        mode a reader is not blocked by writers; in the rare moments it would
        be (the WAL being reset), this gives up and the caller reads in a thread."""
        sql, params = _select(query)
        if self._in_memory:
            if not self._write_lock.acquire(blocking=False):
                return None
            try:
                return [dict(row) for row in self._writer.execute(sql, params).fetchall()]
            finally:
                self._write_lock.release()
        # One connection, opened with the index (so its set-up is not on the
        # loop), for one caller at a time: another gives up and uses a thread.
        assert self._at_once is not None
        if not self._at_once_lock.acquire(blocking=False):
            return None
        try:
            return [dict(row) for row in self._at_once.execute(sql, params).fetchall()]
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return None
            raise
        finally:
            self._at_once_lock.release()

    def version_now(self) -> int | None:
        """A number that changes when a commit has been made to the index by any
        other connection (this process's writer, another process) since the
        last call (``PRAGMA data_version``), read without waiting; ``None``
        when it cannot be had at once, and always for an in-memory index (its
        one connection sees no commit as another's)."""
        if self._in_memory:
            return None
        assert self._at_once is not None
        if not self._at_once_lock.acquire(blocking=False):
            return None
        try:
            return int(self._at_once.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.OperationalError:
            return None
        finally:
            self._at_once_lock.release()

    def _find_in_memory(self, sql: str, params: list[Any]) -> Iterator[dict[str, Any]]:
        # One connection only: hold the lock per batch, never across a yield.
        with self._write_lock:
            cursor = self._writer.execute(sql, params)
        try:
            while True:
                with self._write_lock:
                    rows = cursor.fetchmany(256)
                if not rows:
                    return
                for row in rows:
                    yield dict(row)
        finally:
            cursor.close()

    def _borrow_reader(self) -> sqlite3.Connection:
        with self._queue_lock:
            if self._idle_readers:
                return self._idle_readers.pop()
        return self._connect()

    def _return_reader(self, connection: sqlite3.Connection) -> None:
        with self._queue_lock:
            if len(self._idle_readers) < _IDLE_READERS:
                self._idle_readers.append(connection)
                return
        connection.close()

    def set_metadata(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._transaction() as db:
            db.executemany(
                """INSERT OR REPLACE INTO instance_metadata (instance_pk, json)
                   SELECT pk, ? FROM instances WHERE sop_instance_uid = ?""",
                [(metadata, sop_instance_uid) for sop_instance_uid, metadata in items],
            )

    def instances_without_metadata(
        self, after: int, limit: int, stored_before: str
    ) -> list[tuple[int, StoredInstance]]:
        with self._reading() as db:
            rows = db.execute(
                """SELECT i.pk, st.study_instance_uid, se.series_instance_uid,
                          i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
                          i.blob_key, i.size, i.content_hash, i.stored_at
                   FROM instances i
                   JOIN series se ON se.pk = i.series_pk
                   JOIN studies st ON st.pk = se.study_pk
                   LEFT JOIN instance_metadata m ON m.instance_pk = i.pk
                   WHERE i.pk > ? AND m.instance_pk IS NULL AND i.stored_at < ?
                   ORDER BY i.pk LIMIT ?""",
                (after, stored_before, limit),
            ).fetchall()
        return [(int(row[0]), StoredInstance(*row[1:])) for row in rows]

    def count(self, query: Query) -> int:
        sql, params = _select(query, count=True)
        with self._reading() as db:
            return int(db.execute(sql, params).fetchone()[0])

    def statistics(self) -> ArchiveStatistics:
        with self._reading() as db:
            row = db.execute(
                """SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),
                          (SELECT count(*) FROM series), count(*), coalesce(sum(size), 0)
                   FROM instances"""
            ).fetchone()
        return ArchiveStatistics(*row)

    # -- writes --------------------------------------------------------------

    def add_instance(self, record: InstanceRecord) -> StoredInstance | None:
        # Group commit: every commit costs an fsync, so concurrent associations
        # queue their records and whichever thread gets the writer commits all
        # queued ones in one transaction. Each record still succeeds or fails on
        # its own (savepoints); each caller returns only after the commit.
        pending = _PendingAdd(record)
        with self._queue_lock:
            self._queue.append(pending)
        with self._write_lock:
            if not pending.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit_batch(batch)
        if pending.error is not None:
            raise pending.error
        return pending.existing

    def add_instances(self, records: Sequence[InstanceRecord]) -> list[StoredInstance | None]:
        """``add_instance`` for many records in one transaction (bulk loading)."""
        batch = [_PendingAdd(record) for record in records]
        with self._write_lock:
            self._commit_batch(batch)
        for item in batch:
            if item.error is not None:
                raise item.error
        return [item.existing for item in batch]

    def _commit_batch(self, batch: list[_PendingAdd]) -> None:
        try:
            with self._transaction() as db:
                for item in batch:
                    db.execute("SAVEPOINT one_instance")
                    try:
                        item.existing = self._find(db, item.record.sop_instance_uid)
                        if item.existing is None:
                            self._insert(db, item.record)
                    except sqlite3.Error as exc:
                        db.execute("ROLLBACK TO one_instance")
                        item.error = exc
                    db.execute("RELEASE one_instance")
        except sqlite3.Error as exc:
            # The commit itself failed (disk full, I/O error): nothing in the batch is stored.
            for item in batch:
                item.existing = None
                item.error = item.error or exc
        finally:
            for item in batch:
                item.done = True

    def replace_instance(self, record: InstanceRecord) -> StoredInstance | None:
        with self._transaction() as db:
            old = self._find(db, record.sop_instance_uid)
            if old is not None:
                self._delete(db, old.sop_instance_uid)
            self._insert(db, record)
            return old

    def remove_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        with self._transaction() as db:
            old = self._find(db, sop_instance_uid)
            if old is not None:
                self._delete(db, sop_instance_uid)
            return old

    def _insert(self, db: sqlite3.Connection, record: InstanceRecord) -> None:
        values = dict(record.values)
        sql.derived_values(values)
        values.setdefault("patient_id", "")
        values.setdefault("issuer_of_patient_id", "")

        new_study = False
        row = db.execute(
            "SELECT pk, patient_pk FROM studies WHERE study_instance_uid = ?",
            (values["study_instance_uid"],),
        ).fetchone()
        if row:
            # A study belongs to the patient that brought its first instance, as in
            # Orthanc; later instances with other demographics do not move it (nor
            # create an empty patient row for their demographics).
            study_pk, patient_pk = row
        else:
            patient_pk = self._pk(
                db,
                "SELECT pk FROM patients WHERE patient_id = ? AND issuer_of_patient_id = ?",
                (values["patient_id"], values["issuer_of_patient_id"]),
            ) or self._insert_row(db, Level.PATIENT, values, {})
            study_pk = self._insert_row(
                db,
                Level.STUDY,
                values,
                {"patient_pk": patient_pk, "created_at": record.stored_at},
            )
            new_study = True

        new_series = False
        series_pk = self._pk(
            db,
            "SELECT pk FROM series WHERE series_instance_uid = ?",
            (values["series_instance_uid"],),
        )
        if series_pk is None:
            series_pk = self._insert_row(
                db, Level.SERIES, values, {"study_pk": study_pk, "created_at": record.stored_at}
            )
            new_series = True

        self._insert_row(
            db,
            Level.IMAGE,
            values,
            {
                "series_pk": series_pk,
                "transfer_syntax_uid": record.transfer_syntax_uid,
                "blob_key": record.blob_key,
                "size": record.size,
                "content_hash": record.content_hash,
                "pixel_data_offset": record.pixel_data_offset,
                "pixel_data_length": record.pixel_data_length,
                "source_ae_title": record.source_ae_title,
                "stored_at": record.stored_at,
            },
        )
        db.execute(
            """UPDATE patients SET
                 number_of_patient_related_studies = number_of_patient_related_studies + ?,
                 number_of_patient_related_series = number_of_patient_related_series + ?,
                 number_of_patient_related_instances = number_of_patient_related_instances + 1
               WHERE pk = ?""",
            (int(new_study), int(new_series), patient_pk),
        )
        db.execute(
            """UPDATE studies SET
                 number_of_study_related_series = number_of_study_related_series + ?,
                 number_of_study_related_instances = number_of_study_related_instances + 1
               WHERE pk = ?""",
            (int(new_series), study_pk),
        )
        db.execute(
            """UPDATE series SET
                 number_of_series_related_instances = number_of_series_related_instances + 1
               WHERE pk = ?""",
            (series_pk,),
        )
        self._refresh_study_summaries(db, study_pk, new_series, values.get("sop_class_uid"))

    def _refresh_study_summaries(
        self, db: sqlite3.Connection, study_pk: int, series_changed: bool, sop_class: Any
    ) -> None:
        """Keep ModalitiesInStudy and SOPClassesInStudy equal to what the study holds."""
        current = db.execute(
            "SELECT sop_classes_in_study FROM studies WHERE pk = ?", (study_pk,)
        ).fetchone()[0]
        if series_changed or not sop_class or sop_class not in (current or "").split("\\"):
            modalities = [
                r[0]
                for r in db.execute(
                    """SELECT DISTINCT modality FROM series
                       WHERE study_pk = ? AND modality IS NOT NULL AND modality != ''
                       ORDER BY modality""",
                    (study_pk,),
                )
            ]
            classes = [
                r[0]
                for r in db.execute(
                    """SELECT DISTINCT i.sop_class_uid FROM instances i
                       JOIN series se ON se.pk = i.series_pk
                       WHERE se.study_pk = ? ORDER BY i.sop_class_uid""",
                    (study_pk,),
                )
            ]
            db.execute(
                "UPDATE studies SET modalities_in_study = ?, sop_classes_in_study = ? WHERE pk = ?",
                ("\\".join(modalities) or None, "\\".join(classes) or None, study_pk),
            )

    def _delete(self, db: sqlite3.Connection, sop_instance_uid: str) -> None:
        series_pk, study_pk, patient_pk = db.execute(
            """SELECT se.pk, st.pk, st.patient_pk FROM instances i
               JOIN series se ON se.pk = i.series_pk
               JOIN studies st ON st.pk = se.study_pk
               WHERE i.sop_instance_uid = ?""",
            (sop_instance_uid,),
        ).fetchone()
        db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
        db.execute(
            """UPDATE series SET
                 number_of_series_related_instances = number_of_series_related_instances - 1
               WHERE pk = ?""",
            (series_pk,),
        )
        series_gone = db.execute(
            "DELETE FROM series WHERE pk = ? AND number_of_series_related_instances <= 0",
            (series_pk,),
        ).rowcount
        db.execute(
            """UPDATE studies SET
                 number_of_study_related_series = number_of_study_related_series - ?,
                 number_of_study_related_instances = number_of_study_related_instances - 1
               WHERE pk = ?""",
            (series_gone, study_pk),
        )
        study_gone = db.execute(
            "DELETE FROM studies WHERE pk = ? AND number_of_study_related_instances <= 0",
            (study_pk,),
        ).rowcount
        db.execute(
            """UPDATE patients SET
                 number_of_patient_related_studies = number_of_patient_related_studies - ?,
                 number_of_patient_related_series = number_of_patient_related_series - ?,
                 number_of_patient_related_instances = number_of_patient_related_instances - 1
               WHERE pk = ?""",
            (study_gone, series_gone, patient_pk),
        )
        db.execute(
            "DELETE FROM patients WHERE pk = ? AND number_of_patient_related_instances <= 0",
            (patient_pk,),
        )
        if not study_gone:
            self._refresh_study_summaries(db, study_pk, True, None)

    @staticmethod
    def _pk(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int | None:
        row = db.execute(sql, params).fetchone()
        return int(row[0]) if row else None

    @staticmethod
    def _insert_row(
        db: sqlite3.Connection, level: Level, values: dict[str, Any], extra: dict[str, Any]
    ) -> int:
        row = {c: values[c] for c in columns(level) if values.get(c) not in (None, "")}
        if level is Level.PATIENT:
            row.setdefault("patient_id", "")
            row.setdefault("issuer_of_patient_id", "")
        row.update(extra)
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        cursor = db.execute(
            f"INSERT INTO {TABLES[level]} ({names}) VALUES ({marks})", tuple(row.values())
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def close(self) -> None:
        with self._queue_lock:
            for connection in self._idle_readers:
                connection.close()
            self._idle_readers.clear()
        with self._at_once_lock:
            at_once = getattr(self, "_at_once", None)  # absent when opening failed
            if at_once is not None:
                at_once.close()
        with self._write_lock:
            self._writer.close()
            if self._lock_file is not None:
                self._lock_file.close()


@functools.lru_cache(maxsize=256)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(wildcard_regex(pattern), re.DOTALL)


def _any_value_matches(value: str | None, pattern: str) -> bool:
    """C.2.2.2.4 on a multi-valued attribute: some one value matches the pattern."""
    if value is None:
        return False
    regex = _wildcard_regex(pattern)
    return any(regex.fullmatch(one) for one in value.split("\\"))
