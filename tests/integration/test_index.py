"""The index, on SQLite and PostgreSQL: rows, counters and study summaries, alone and under
concurrency (threads and processes), and schema migrations."""

from __future__ import annotations

import multiprocessing
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from pacs.errors import StorageError
from pacs.index import PostgresIndex, SqliteIndex
from pacs.index.base import Index, InstanceRecord
from pacs.index.postgres import POSTGRES
from pacs.index.query import Condition, Query, SingleValue
from pacs.index.schema import Level
from pacs.index.sql import SCHEMA_VERSION, migrations
from pacs.index.sqlite import SQLITE
from pacs.types import ArchiveStatistics
from tests.integration.conftest import IndexLocation
from tests.services import PostgresCluster

SC = "1.2.840.10008.5.1.4.1.1.7"


def record(
    sop: str,
    study: str = "1.1",
    series: str = "1.1.1",
    *,
    patient: str = "P1",
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    size: int = 100,
    version: str = "a",
    **values: Any,
) -> InstanceRecord:
    return InstanceRecord(
        values={
            "sop_instance_uid": sop,
            "study_instance_uid": study,
            "series_instance_uid": series,
            "patient_id": patient,
            "sop_class_uid": sop_class,
            "modality": modality,
            **values,
        },
        blob_key=f"{study}/{series}/{sop}.{version}.dcm",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size=size,
        content_hash=f"hash-{sop}-{version}",
        pixel_data_offset=None,
        pixel_data_length=None,
        source_ae_title="TEST",
        stored_at="2024-01-01T00:00:00.000+00:00",
    )


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "postgres":
        idx: Index = PostgresIndex(request.getfixturevalue("postgres_url"))
    else:
        idx = SqliteIndex(":memory:" if request.param == "sqlite-memory" else tmp_path / "x.sqlite")
    yield idx
    idx.close()


def study_row(index: Index, study: str) -> dict[str, Any]:
    row = index.entity(Level.STUDY, study)
    assert row is not None, f"no study {study}"
    return row


def test_counts_and_summaries_after_adds(index: Index) -> None:
    assert index.add_instance(record("1", series="s1", modality="CT")) is None
    assert index.add_instance(record("2", series="s1", modality="CT")) is None
    assert (
        index.add_instance(record("3", series="s2", modality="MR", sop_class=MRImageStorage))
        is None
    )
    assert index.add_instance(record("4", series="s3", modality="", sop_class=SC)) is None
    assert index.add_instance(record("5", study="2.2", series="s4", modality="CT", size=7)) is None

    assert index.statistics() == ArchiveStatistics(
        patients=1, studies=2, series=4, instances=5, stored_bytes=407
    )
    study = study_row(index, "1.1")
    assert study["number_of_study_related_series"] == 3
    assert study["number_of_study_related_instances"] == 4
    assert study["modalities_in_study"] == "CT\\MR"  # sorted, no empty modality
    assert study["sop_classes_in_study"] == "\\".join(sorted([CTImageStorage, MRImageStorage, SC]))
    other = study_row(index, "2.2")
    assert other["modalities_in_study"] == "CT"
    assert other["sop_classes_in_study"] == CTImageStorage

    series = index.entity(Level.SERIES, "s1")
    assert series is not None and series["number_of_series_related_instances"] == 2
    patient = index.entity(Level.PATIENT, "P1")
    assert patient is not None
    assert patient["number_of_patient_related_studies"] == 2
    assert patient["number_of_patient_related_series"] == 4
    assert patient["number_of_patient_related_instances"] == 5

    instance = index.entity(Level.IMAGE, "3")
    assert instance is not None and instance["sop_class_uid"] == MRImageStorage
    assert index.entity(Level.STUDY, "9.9") is None


def test_counts_and_summaries_after_removes(index: Index) -> None:
    for sop, series, modality, sop_class in [
        ("1", "s1", "CT", CTImageStorage),
        ("2", "s1", "CT", CTImageStorage),
        ("3", "s2", "MR", MRImageStorage),
    ]:
        index.add_instance(record(sop, series=series, modality=modality, sop_class=sop_class))

    removed = index.remove_instance("3")
    assert removed is not None and removed.sop_instance_uid == "3"
    assert removed.blob_key == "1.1/s2/3.a.dcm"
    study = study_row(index, "1.1")
    assert study["number_of_study_related_series"] == 1
    assert study["number_of_study_related_instances"] == 2
    assert study["modalities_in_study"] == "CT"
    assert study["sop_classes_in_study"] == CTImageStorage
    assert index.entity(Level.SERIES, "s2") is None

    index.remove_instance("1")
    assert study_row(index, "1.1")["number_of_study_related_instances"] == 1
    assert index.remove_instance("1") is None  # already gone
    index.remove_instance("2")
    assert index.entity(Level.STUDY, "1.1") is None
    assert index.entity(Level.PATIENT, "P1") is None
    assert index.statistics() == ArchiveStatistics(0, 0, 0, 0, 0)


def test_duplicate_add_returns_the_stored_instance_and_changes_nothing(index: Index) -> None:
    index.add_instance(record("1"))
    existing = index.add_instance(record("1", version="b", size=999))
    assert existing is not None
    assert (existing.blob_key, existing.content_hash, existing.size) == (
        "1.1/1.1.1/1.a.dcm",
        "hash-1-a",
        100,
    )
    assert existing.study_instance_uid == "1.1" and existing.series_instance_uid == "1.1.1"
    assert index.statistics().instances == 1
    assert study_row(index, "1.1")["number_of_study_related_instances"] == 1
    found = index.find_instance("1")
    assert found == existing
    assert index.find_instance("2") is None


def test_replace_instance(index: Index) -> None:
    index.add_instance(record("1", series="s1"))
    index.add_instance(record("2", series="s1"))
    old = index.replace_instance(record("1", series="s1", version="b", size=50))
    assert old is not None and old.blob_key == "1.1/s1/1.a.dcm"
    now = index.find_instance("1")
    assert now is not None and (now.blob_key, now.content_hash, now.size) == (
        "1.1/s1/1.b.dcm",
        "hash-1-b",
        50,
    )
    assert index.statistics() == ArchiveStatistics(1, 1, 1, 2, 150)
    assert study_row(index, "1.1")["number_of_study_related_instances"] == 2

    # a new copy that moved to another series (corrected by the modality)
    index.replace_instance(record("2", series="s2", modality="MR", sop_class=MRImageStorage))
    study = study_row(index, "1.1")
    assert study["number_of_study_related_series"] == 2
    assert study["modalities_in_study"] == "CT\\MR"
    assert index.entity(Level.SERIES, "s1")["number_of_series_related_instances"] == 1  # type: ignore[index]

    assert index.replace_instance(record("3", series="s1")) is None  # nothing to replace: added
    assert index.statistics().instances == 3


def test_study_stays_with_the_patient_of_its_first_instance(index: Index) -> None:
    index.add_instance(record("1", patient="P1"))
    # same study, other demographics: the instance joins P1's study
    index.add_instance(record("2", patient="P2"))
    assert index.statistics().patients == 1
    assert index.entity(Level.PATIENT, "P2") is None
    patient = index.entity(Level.PATIENT, "P1")
    assert patient is not None and patient["number_of_patient_related_instances"] == 2
    index.remove_instance("1")
    index.remove_instance("2")
    assert index.statistics() == ArchiveStatistics(0, 0, 0, 0, 0)


def test_patients_are_told_apart_by_issuer(index: Index) -> None:
    index.add_instance(record("1", study="1", patient="123", issuer_of_patient_id="HOSP-A"))
    index.add_instance(record("2", study="2", patient="123", issuer_of_patient_id="HOSP-B"))
    index.add_instance(record("3", study="3", patient="123", issuer_of_patient_id="HOSP-A"))
    assert index.statistics().patients == 2


def test_person_names_are_normalised(index: Index) -> None:
    decomposed = unicodedata.normalize("NFD", "NGUYỄN^Văn An")
    index.add_instance(record("1", patient_name=decomposed, referring_physician_name="DR^WHO"))
    patient = index.entity(Level.PATIENT, "P1")
    assert patient is not None
    assert patient["patient_name"] == decomposed  # kept as received
    assert patient["patient_name_norm"] == "nguyễn^văn an"
    assert patient["patient_name_norm"] == unicodedata.normalize(
        "NFC", patient["patient_name_norm"]
    )
    assert study_row(index, "1.1")["referring_physician_name_norm"] == "dr^who"


def test_concurrent_adds_lose_no_counts(index_location: IndexLocation) -> None:
    index = index_location.open()
    threads_n, per_thread = 8, 40
    errors: list[BaseException] = []
    results: dict[str, list[object]] = {}
    lock = threading.Lock()
    start = threading.Barrier(threads_n)

    def worker(t: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(per_thread):
                n = t * per_thread + i
                # every thread also re-adds the previous thread's UIDs: races on purpose
                for sop in (f"{n}", f"{(n + per_thread) % (threads_n * per_thread)}"):
                    outcome = index.add_instance(
                        record(
                            sop,
                            study=f"st{int(sop) % 2}",
                            series=f"se{int(sop) % 4}",
                            patient=f"P{int(sop) % 2}",
                        )
                    )
                    with lock:
                        results.setdefault(sop, []).append(outcome)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert errors == []
        total = threads_n * per_thread
        assert len(results) == total
        # each UID inserted exactly once; the other add saw it as already stored
        for sop, outcomes in results.items():
            assert len(outcomes) == 2
            assert sum(o is None for o in outcomes) == 1, sop
        assert index.statistics() == ArchiveStatistics(2, 2, 4, total, total * 100)
        for study in ("st0", "st1"):
            row = study_row(index, study)
            assert row["number_of_study_related_instances"] == total // 2
            assert row["number_of_study_related_series"] == 2
        for series in ("se0", "se1", "se2", "se3"):
            row = index.entity(Level.SERIES, series)
            assert row is not None and row["number_of_series_related_instances"] == total // 4
        for patient in ("P0", "P1"):
            row = index.entity(Level.PATIENT, patient)
            assert row is not None
            assert row["number_of_patient_related_instances"] == total // 2
            assert row["number_of_patient_related_studies"] == 1
            assert row["number_of_patient_related_series"] == 2
    finally:
        index.close()

    # what was committed is durable: a fresh connection sees the same
    assert index_location.sql("SELECT count(*) FROM instances") == [(total,)]
    assert index_location.sql("SELECT sum(number_of_study_related_instances) FROM studies") == [
        (total,)
    ]


def test_index_survives_reopening(index_location: IndexLocation) -> None:
    first = index_location.open()
    first.add_instance(record("1"))
    first.close()
    second = index_location.open()
    try:
        assert second.find_instance("1") is not None
        assert second.statistics().instances == 1
    finally:
        second.close()


def test_newer_schema_is_refused(index_location: IndexLocation) -> None:
    index_location.open().close()
    if index_location.kind == "postgres":
        index_location.sql("INSERT INTO schema_migrations (version, description) VALUES (99, 'x')")
    else:
        index_location.sql("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="newer"):
        index_location.open()


def test_migrations_are_recorded_and_an_old_index_is_brought_up_to_date(
    index_location: IndexLocation,
) -> None:
    """An index made by a server that knew only migration 1 gets migration 2 at start-up."""
    dialect = POSTGRES if index_location.kind == "postgres" else SQLITE
    first = migrations(dialect)[0]
    assert first[0] == 1
    if index_location.kind == "postgres":
        index_location.sql(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
            " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        index_location.sql(f"INSERT INTO schema_migrations VALUES (1, '{first[1]}')")
    else:
        index_location.sql("PRAGMA user_version=1")
    for statement in first[2]:
        index_location.sql(statement)
    tables = (
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'instance_metadata'"
        if index_location.kind == "postgres"
        else "SELECT count(*) FROM sqlite_master WHERE name = 'instance_metadata'"
    )
    assert index_location.sql(tables) == [(0,)]

    index = index_location.open()
    try:
        index.add_instance(record("1"))
        index.set_metadata([("1", b"{}")])
        assert index_location.sql(tables) == [(1,)]
    finally:
        index.close()
    if index_location.kind == "postgres":
        versions = [v for (v,) in index_location.sql("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
    else:
        assert index_location.sql("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    index_location.open().close()  # opening again applies nothing twice


def _add_from_a_process(location: IndexLocation, worker: int, count: int) -> None:
    index = location.open()
    try:
        for n in range(count):
            # every process adds every UID: one wins each, the others see it stored
            sop = str(n)
            index.add_instance(
                record(sop, study=f"st{n % 3}", series=f"se{n % 6}", patient=f"P{n % 3}")
            )
    finally:
        index.close()


def test_several_processes_ingest_safely(index_location: IndexLocation) -> None:
    """Three processes (DICOM workers, other servers) add the same instances at once."""
    index_location.open().close()  # migrated once, before the race
    context = multiprocessing.get_context("spawn")
    count = 120
    processes = [
        context.Process(target=_add_from_a_process, args=(index_location, w, count))
        for w in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    index = index_location.open()
    try:
        assert index.statistics() == ArchiveStatistics(3, 3, 6, count, count * 100)
        for study in ("st0", "st1", "st2"):
            row = study_row(index, study)
            assert row["number_of_study_related_instances"] == count // 3
            assert row["number_of_study_related_series"] == 2
        for patient in ("P0", "P1", "P2"):
            row = index.entity(Level.PATIENT, patient)
            assert row is not None
            assert row["number_of_patient_related_instances"] == count // 3
            assert row["number_of_patient_related_studies"] == 1
    finally:
        index.close()


def test_postgres_down_is_a_storage_error_and_the_index_recovers_by_itself() -> None:
    """A PostgreSQL server of its own, stopped and started again under an open index."""
    cluster = PostgresCluster().start()
    try:
        index = PostgresIndex(cluster.create_database(), wait=1.0)
        index.add_instance(record("1"))
        cluster.kill()
        with pytest.raises(StorageError, match="index is unavailable"):
            index.find_instance("1")
        with pytest.raises(StorageError, match="index is unavailable"):
            index.add_instance(record("2"))
        with pytest.raises(StorageError):
            list(index.find(Query(Level.IMAGE, (), ((Level.IMAGE, "sop_instance_uid"),))))
        cluster.resume()
        # The pool reconnects by itself, at its next attempt (it backs off between them).
        deadline = time.monotonic() + 30
        while True:
            try:
                assert index.find_instance("1") is not None
                break
            except StorageError:
                assert time.monotonic() < deadline, "the index did not reconnect"
        assert index.add_instance(record("2")) is None
        assert index.statistics().instances == 2
        index.close()
    finally:
        cluster.stop()


def _one_instance_query(sop: str) -> Query:
    return Query(
        Level.IMAGE,
        (Condition(Level.IMAGE, "sop_instance_uid", SingleValue(sop)),),
        ((Level.IMAGE, "sop_instance_uid"), (Level.IMAGE, "blob_key")),
    )


def test_find_now_answers_from_sqlite_and_leaves_postgres_to_a_thread(index: Index) -> None:
    index.add_instance(record("1.1.1.1"))
    query = _one_instance_query("1.1.1.1")
    found = index.find_now(query)
    if isinstance(index, PostgresIndex):
        assert found is None  # a round trip to the server: never on an event loop
        return
    assert found == list(index.find(query))
    assert found == [{"sop_instance_uid": "1.1.1.1", "blob_key": "1.1/1.1.1/1.1.1.1.a.dcm"}]
    assert index.find_now(_one_instance_query("9.9")) == []


def test_find_now_never_waits_for_a_lock(tmp_path: Path) -> None:
    index = SqliteIndex(tmp_path / "x.sqlite")
    try:
        index.add_instance(record("1.1.1.1"))
        assert index.find_now(_one_instance_query("1.1.1.1"))
        # Its connection gives up at once when busy (the others wait 30 s). A WAL
        # reader is busy only in moments a test cannot make (the WAL being reset).
        connection = index._at_once
        assert connection.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        assert connection.execute("PRAGMA query_only").fetchone()[0] == 1
    finally:
        index.close()

    memory = SqliteIndex(":memory:")
    try:
        memory.add_instance(record("1.1.1.1"))
        taken = threading.Event()
        release = threading.Event()

        def hold_the_writer() -> None:
            with memory._write_lock:  # one connection only: a write in progress
                taken.set()
                release.wait(10)

        holder_thread = threading.Thread(target=hold_the_writer)
        holder_thread.start()
        taken.wait(10)
        try:
            assert memory.find_now(_one_instance_query("1.1.1.1")) is None
        finally:
            release.set()
            holder_thread.join()
        assert memory.find_now(_one_instance_query("1.1.1.1")) is not None
    finally:
        memory.close()
