"""Index.find and count on SQLite (a file) and PostgreSQL: matching, paging, streaming and
query plans."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from pacs.core.query import build_query
from pacs.index import PostgresIndex, SqliteIndex
from pacs.index.base import Index, InstanceRecord
from pacs.index.postgres import _select as postgres_select
from pacs.index.query import (
    AnyOf,
    Condition,
    Query,
    Range,
    SingleValue,
    UidList,
    Wildcard,
)
from pacs.index.schema import Level
from pacs.index.sqlite import _select as sqlite_select
from tests.dicom_factory import query as sql_query
from tests.integration.conftest import INDEX_KINDS, IndexLocation

P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
NAMES = ("Nguyễn^Văn An", "Trần^Thị Bình", "Doe^John", "Müller^Hans", "A[1]^B")
SOP = (IM, "sop_instance_uid")
STUDY = (ST, "study_instance_uid")


def record(number: int, *, per_study: int = 10, **values: Any) -> InstanceRecord:
    """Instance ``number``: ``per_study`` instances a study, two series a study,
    a study a day of 2024 and seven patients in turn."""
    study = number // per_study
    patient = study % 7
    defaults = {
        "sop_instance_uid": f"1.2.3.{number}",
        "series_instance_uid": f"1.2.4.{study}.{number % 2}",
        "study_instance_uid": f"1.2.5.{study}",
        "patient_id": f"P{patient}",
        "patient_name": NAMES[patient % len(NAMES)],
        "study_date": f"2024{1 + study // 28 % 12:02d}{1 + study % 28:02d}",
        "modality": "MR" if number % 2 else "CT",
        "sop_class_uid": MRImageStorage if number % 2 else CTImageStorage,
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "series_number": 1 + number % 2,
        "instance_number": number,
    }
    return InstanceRecord(
        values={**defaults, **values},
        blob_key=f"blob/{number}",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size=100,
        content_hash=f"hash-{number}",
        pixel_data_offset=None,
        pixel_data_length=None,
        source_ae_title="TEST",
        stored_at="2024-01-01T00:00:00.000+00:00",
    )


SMALL = 600
BIG = 2000  # instances in the shared index: 200 studies, 400 series, 7 patients


@pytest.fixture(scope="module", params=INDEX_KINDS)
def big_location(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> IndexLocation:
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        return IndexLocation("postgres", cluster.create_database("query"))
    return IndexLocation("sqlite", str(tmp_path_factory.mktemp("query") / "index.sqlite"))


@pytest.fixture(scope="module")
def big(big_location: IndexLocation) -> Iterator[Index]:
    """An index that no test changes."""
    index = big_location.open()
    index.add_instances([record(n) for n in range(BIG)])
    if big_location.kind == "postgres":
        big_location.sql("ANALYZE")  # as autovacuum would have by now
    yield index
    index.close()


@pytest.fixture
def index(index_location: IndexLocation) -> Iterator[Index]:
    """An index of SMALL instances (60 studies) for tests that write: more
    than one batch of rows, so a result read in part holds an open statement."""
    idx = index_location.open()
    idx.add_instances([record(n) for n in range(SMALL)])
    yield idx
    idx.close()


def values(index: Index, query: Query, column: str = "sop_instance_uid") -> list[Any]:
    return [row[column] for row in index.find(query)]


def where(level: Level, *conditions: Condition, **options: Any) -> Query:
    columns = {P: (P, "patient_id"), ST: STUDY, SE: (SE, "series_instance_uid"), IM: SOP}
    return Query(level, conditions, (columns[level],), **options)


# -- matching on a real file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (where(P), 7),
        (where(ST), 200),
        (where(SE), 400),
        (where(IM), BIG),
        (where(ST, Condition(P, "patient_id", SingleValue("P3"))), 29),
        (where(IM, Condition(P, "patient_id", SingleValue("P3"))), 290),
        (where(ST, Condition(ST, "study_date", Range("20240101", "20240131"))), 28),
        (where(ST, Condition(ST, "study_date", Range(None, "20240102"))), 2),
        (where(ST, Condition(ST, "study_date", Range("20240228", None))), 1 + 200 - 56),
        (where(P, Condition(P, "patient_name_norm", Wildcard("nguy*"))), 2),
        (where(SE, Condition(SE, "modality", AnyOf((SingleValue("MR"),)))), 200),
        (where(SE, Condition(SE, "series_number", SingleValue("2"))), 200),
        (where(IM, Condition(IM, "image_type", SingleValue("PRIMARY"), True)), BIG),
        (where(IM, Condition(IM, "image_type", SingleValue("PRIM"), True)), 0),
        (where(ST, Condition(ST, "modalities_in_study", SingleValue("MR"), True)), 200),
        (
            where(ST, Condition(ST, "study_instance_uid", UidList(("1.2.5.0", "1.2.5.7", "9")))),
            2,
        ),
        (where(IM, Condition(IM, "acquisition_date_time", Range(None, None))), 0),
        (where(IM, Condition(IM, "instance_number", Range(None, None))), BIG),
    ],
)
def test_find_and_count_agree(big: Index, query: Query, expected: int) -> None:
    rows = list(big.find(query))
    assert len(rows) == expected
    assert big.count(query) == expected
    assert len({tuple(row.values()) for row in rows}) == expected  # no entity twice


def test_person_names_through_the_query_engine(big: Index) -> None:
    def patients(name: str, **options: Any) -> set[str]:
        query = build_query(P, {"PatientName": name}, ["PatientID"], **options)
        return set(values(big, query, "patient_id"))

    # patients P0 and P5 are Nguyễn^Văn An, P1 and P6 Trần^Thị Bình
    assert patients("nguy*") == {"P0", "P5"}
    assert patients("NGUYỄN^VĂN AN") == {"P0", "P5"}
    assert patients("*thị*") == {"P1", "P6"}
    assert patients("trần*", case_insensitive_names=False) == set()
    assert patients("Trần*", case_insensitive_names=False) == {"P1", "P6"}
    assert patients("a[1]*") == {"P4"}  # '[' is literal, not a GLOB class
    assert patients("a1*") == set()


def test_dates_and_uid_lists_through_the_query_engine(big: Index) -> None:
    january = build_query(ST, {"StudyDate": "20240101-20240131"}, ["StudyInstanceUID"])
    assert set(values(big, january, "study_instance_uid")) == {f"1.2.5.{s}" for s in range(28)}
    march_on = build_query(ST, {"StudyDate": "20240301-"}, ["StudyInstanceUID"])
    assert set(values(big, march_on, "study_instance_uid")) == {
        f"1.2.5.{s}" for s in range(56, 200)
    }
    listed = build_query(
        IM, {"SOPInstanceUID": "1.2.3.5\\1.2.3.1999\\1.2.3.2000"}, ["SOPInstanceUID"]
    )
    assert sorted(values(big, listed)) == ["1.2.3.1999", "1.2.3.5"]


# -- paging ------------------------------------------------------------------------------


def test_pages_partition_the_result_in_storage_order(big: Index) -> None:
    condition = Condition(P, "patient_id", AnyOf((SingleValue("P1"), SingleValue("P2"))))
    everything = sorted(values(big, where(IM, condition)), key=lambda u: int(u.split(".")[-1]))
    assert len(everything) == 580
    pages = [
        values(big, where(IM, condition, limit=64, offset=offset)) for offset in range(0, 640, 64)
    ]
    assert [len(page) for page in pages] == [64] * 9 + [4]
    assert list(itertools.chain(*pages)) == everything  # storage order: no gap, no repeat
    # the same page twice is the same page
    assert values(big, where(IM, condition, limit=64, offset=128)) == pages[2]
    assert values(big, where(IM, condition, limit=64, offset=640)) == []


def test_offset_alone_and_limit_zero(big: Index) -> None:
    assert values(big, where(ST, offset=195), "study_instance_uid") == [
        f"1.2.5.{s}" for s in range(195, 200)
    ]
    assert values(big, where(ST, limit=0), "study_instance_uid") == []
    assert values(big, where(ST, limit=3), "study_instance_uid") == [
        "1.2.5.0",
        "1.2.5.1",
        "1.2.5.2",
    ]


def test_count_ignores_paging(big: Index) -> None:
    assert big.count(where(ST, limit=5, offset=10)) == 200


def test_pages_stay_stable_while_instances_arrive(index: Index) -> None:
    def page(offset: int) -> list[str]:
        return values(index, where(ST, limit=4, offset=offset), "study_instance_uid")

    seen = page(0)
    # new studies arrive between two pages; they come after every earlier one
    index.add_instances([record(n) for n in range(SMALL, SMALL + 30)])
    while next_page := page(len(seen)):
        seen += next_page
    assert seen == [f"1.2.5.{s}" for s in range(SMALL // 10 + 3)]


# -- streaming ---------------------------------------------------------------------------


def test_large_results_stream(big: Index, big_location: IndexLocation) -> None:
    """The first row arrives after reading one batch, not the whole result."""
    if isinstance(big, PostgresIndex):
        # A server-side cursor: the result is fetched a batch at a time, which
        # another connection sees as the reader's last statement.
        rows = big.find(where(IM))
        next(rows)
        activity = big_location.sql(
            "SELECT query FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state = 'idle in transaction'"
        )
        assert any(str(q).startswith("FETCH FORWARD 256") for (q,) in activity), activity
        assert sum(1 for _ in rows) == BIG - 1
        return
    assert isinstance(big, SqliteIndex)
    steps = [0]

    def count_step() -> int:
        steps[0] += 1
        return 0  # go on

    # find() borrows an idle reader connection: lend it this instrumented one.
    reader = big._borrow_reader()
    reader.set_progress_handler(count_step, 1)
    big._return_reader(reader)
    try:
        rows = big.find(where(IM))
        next(rows)
        first = steps[0]
        assert sum(1 for _ in rows) == BIG - 1
        total = steps[0]
    finally:
        reader.set_progress_handler(None, 1)
    assert first > 0
    assert first * 4 < total, (first, total)


def test_an_abandoned_generator_releases_its_snapshot(index: Index) -> None:
    """A reader in the middle of a result sees the index as it was when the result
    started; closing the generator, or dropping it, must end that read."""
    everything = where(IM)
    rows = index.find(everything)
    assert isinstance(rows, Generator)  # so that a caller can close it
    assert next(rows)["sop_instance_uid"].startswith("1.2.3.")
    index.add_instance(record(SMALL))
    rows.close()
    assert f"1.2.3.{SMALL}" in values(index, everything)

    rows = index.find(everything)
    next(rows)
    del rows  # abandoned without close: the generator is finalised
    index.add_instance(record(SMALL + 1))
    assert f"1.2.3.{SMALL + 1}" in values(index, everything)
    assert index.count(everything) == SMALL + 2


def test_an_open_generator_does_not_block_writers(index: Index) -> None:
    rows = index.find(where(IM))
    seen = [next(rows)["sop_instance_uid"]]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            index.add_instance(record(SMALL))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=10)
    assert not writer.is_alive(), "a writer waited for an open result"
    assert errors == []
    seen += [row["sop_instance_uid"] for row in rows]
    # the snapshot of when the result started, without the new instance
    assert sorted(seen) == sorted(f"1.2.3.{n}" for n in range(SMALL))
    assert index.count(where(IM)) == SMALL + 1


@pytest.mark.parametrize("kind", ["sqlite-memory", "sqlite-file", "postgres"])
def test_find_streams_in_another_thread(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "postgres":
        index: Index = PostgresIndex(request.getfixturevalue("postgres_url"))
    else:
        index = SqliteIndex(":memory:" if kind == "sqlite-memory" else tmp_path / "x.sqlite")
    try:
        index.add_instances([record(n) for n in range(600)])
        results: list[int] = []
        worker = threading.Thread(
            target=lambda: results.append(sum(1 for _ in index.find(where(IM))))
        )
        rows = index.find(where(IM))
        next(rows)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert results == [600]
        assert 1 + sum(1 for _ in rows) == 600
    finally:
        index.close()


# -- query plans ---------------------------------------------------------------------


def uses_index(location: IndexLocation, query: Query, name: str) -> bool:
    """The plan starts from the index ``name`` (looked up, not read whole) and scans
    no table whole."""
    if location.kind == "sqlite":
        sql, params = sqlite_select(query)
        steps = [
            row["detail"]
            for row in sql_query(Path(location.target), "EXPLAIN QUERY PLAN " + sql, tuple(params))
        ]
        return (
            name in steps[0]
            and steps[0].startswith("SEARCH")
            and not any(step.startswith("SCAN") for step in steps)
        )
    # PostgreSQL's planner, on tables this small, walks a primary key or scans
    # whatever the indexes, and at scale chooses by cost; what can go wrong in
    # our SQL is a condition written so that no index can serve it (a LIKE
    # under a collation that is not "C", a cast on the column). So: with full
    # scans priced out, the condition alone, on its own table, must be an
    # index look-up.
    condition = query.conditions[0]
    sql, params = postgres_select(Query(condition.level, (condition,)))
    with psycopg.connect(location.target) as db:
        db.execute("SET enable_seqscan = off")
        plan = db.execute(("EXPLAIN (FORMAT JSON) " + sql).encode(), params).fetchone()[0]
    nodes = list(_plan_nodes(plan[0]["Plan"]))
    index_name = _POSTGRES_INDEX_NAMES.get(name, name)
    return not any(n["Node Type"] == "Seq Scan" for n in nodes) and any(
        n.get("Index Name") == index_name and "Index Cond" in n for n in nodes
    )


# What SQLite's plans call them, as PostgreSQL names them.
_POSTGRES_INDEX_NAMES = {"(patient_id=?)": "patients_patient_id_issuer_of_patient_id_key"}


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


@pytest.mark.parametrize("level", [P, ST, SE, IM])
@pytest.mark.parametrize("limit", [None, 50])
def test_patient_id_uses_an_index(
    big: Index, big_location: IndexLocation, level: Level, limit: int | None
) -> None:
    query = build_query(level, {"PatientID": "P3"}, limit=limit)
    assert uses_index(big_location, query, "(patient_id=?)")


@pytest.mark.parametrize("level", [P, ST, SE])
@pytest.mark.parametrize("limit", [None, 50])
def test_patient_name_prefix_uses_an_index(
    big: Index, big_location: IndexLocation, level: Level, limit: int | None
) -> None:
    query = build_query(level, {"PatientName": "nguy*"}, limit=limit)
    assert query.conditions[0].column == "patient_name_norm"
    assert uses_index(big_location, query, "patients_patient_name_norm")


@pytest.mark.parametrize("level", [ST, SE])
@pytest.mark.parametrize("limit", [None, 50])
@pytest.mark.parametrize("dates", ["20240101-20240131", "20240301-", "-20240115", "20240105"])
def test_study_date_uses_an_index(
    big: Index, big_location: IndexLocation, level: Level, limit: int | None, dates: str
) -> None:
    query = build_query(level, {"StudyDate": dates}, limit=limit)
    assert uses_index(big_location, query, "studies_study_date")


def test_a_leading_wildcard_scans(big: Index, big_location: IndexLocation) -> None:
    """The check above can fail: no index serves a name that starts with ``*``."""
    query = build_query(P, {"PatientName": "*nguy*"})
    assert not uses_index(big_location, query, "patients_patient_name_norm")


def test_an_unfinished_result_does_not_hide_later_writes_from_its_thread(
    index: Index,
) -> None:
    """Starlette's iterate_in_threadpool leaves a half-read result on a worker
    thread that goes on serving other requests: an instance committed after that
    result started must still be visible to the thread's next lookups."""
    rows = index.find(where(IM))
    assert isinstance(rows, Generator)
    next(rows)
    assert index.add_instance(record(SMALL)) is None  # committed
    try:
        assert index.find_instance(f"1.2.3.{SMALL}") is not None
        assert index.count(where(IM)) == SMALL + 1
    finally:
        rows.close()
