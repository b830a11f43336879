"""The access store and access scopes, on SQLite and PostgreSQL: users, credentials,
shares, the append-only audit trail, and queries limited to what a caller may see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacs.index import PostgresIndex, SqliteIndex
from pacs.index.access import AuditQuery, CredentialRecord, ShareRecord, UserRecord
from pacs.index.query import Query
from pacs.index.schema import Level
from pacs.types import AuditEvent, Scope, fold
from tests.integration.conftest import IndexLocation
from tests.integration.test_index import record

Backend = SqliteIndex | PostgresIndex


@pytest.fixture(params=["sqlite-memory", "sqlite-file", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        backend: Backend = PostgresIndex(request.getfixturevalue("postgres_url"))
    else:
        where = ":memory:" if request.param == "sqlite-memory" else tmp_path / "x.sqlite"
        backend = SqliteIndex(where)
    yield backend
    backend.close()


def test_users_round_trip_and_replace(store: Backend) -> None:
    assert not store.has_users() and store.user("anna") is None
    anna = UserRecord(
        "anna", "hospital", "$argon2id$x", ("Bệnh viện Lào Cai",), ("LC",), False, "t"
    )
    store.put_user(anna)
    assert store.has_users() and store.user("anna") == anna
    store.put_user(UserRecord("anna", "hospital", "$argon2id$y", (), (), True, "t"))
    changed = store.user("anna")
    assert changed is not None and changed.disabled and changed.institutions == ()
    store.put_user(UserRecord("bob", "radiologist", "h", created_at="t"))
    assert [u.username for u in store.users()] == ["anna", "bob"]


def test_credentials_revoke_once(store: Backend) -> None:
    token = CredentialRecord("ab" * 8, "token", "d" * 64, "anna", "t0", "t9", label="ris")
    store.put_credential(token)
    assert store.credential(token.identifier) == token
    assert store.revoke_credential(token.identifier, "t1")
    assert not store.revoke_credential(token.identifier, "t2")  # already revoked
    assert store.credential(token.identifier).revoked_at == "t1"  # type: ignore[union-attr]
    link = CredentialRecord("cd" * 8, "link", "e" * 64, "dr", "t0", "t9", study_uid="1.2")
    store.put_credential(link)
    assert [c.kind for c in store.credentials("anna")] == ["token"]
    assert [c.identifier for c in store.credentials(kind="link")] == [link.identifier]


def test_shares_are_active_until_revoked(store: Backend) -> None:
    store.put_share(ShareRecord("1.2", "hospital-a", "dr", "t0"))
    store.put_share(ShareRecord("1.2", "hospital-a", "dr", "t1"))  # no second active row
    store.put_share(ShareRecord("1.3", "hospital-a", "dr", "t1"))
    assert [s.study_uid for s in store.shares("hospital-a")] == ["1.2", "1.3"]
    assert store.revoke_share("1.2", "hospital-a", "t2")
    assert not store.revoke_share("1.2", "hospital-a", "t3")
    assert [s.study_uid for s in store.shares("hospital-a")] == ["1.3"]
    assert store.shares(study_uid="1.2") == []


def test_audit_is_append_only_and_filtered(store: Backend, request: pytest.FixtureRequest) -> None:
    store.add_instance(record("9", study="7.7", series="7.7.1", patient="PAT-7"))
    events = [
        AuditEvent("login", "failure", "anna", "user", "10.0.0.1", time="2026-01-01T00:00:00"),
        AuditEvent(
            "retrieve",
            "success",
            "dr",
            "user",
            "10.0.0.2",
            "",
            "7.7",
            "frames",
            300,
            time="2026-01-02T00:00:00",
        ),
        AuditEvent("query", "denied", "STRANGER", "node", "10.0.0.3", time="2026-01-03T00:00:00"),
    ]
    store.append_audit(events)
    everything = list(store.audit(AuditQuery()))
    assert [e.action for e in everything] == ["login", "retrieve", "query"]
    assert everything[1].patient_id == "PAT-7" and everything[1].count == 300  # filled in
    assert [e.actor for e in store.audit(AuditQuery(since="2026-01-02"))] == ["dr", "STRANGER"]
    assert [e.action for e in store.audit(AuditQuery(patient_id="PAT-7"))] == ["retrieve"]
    assert [e.action for e in store.audit(AuditQuery(actor="anna"))] == ["login"]
    backend = request.node.callspec.params["store"]
    if backend == "sqlite-memory":
        return  # the triggers are the same as on a file; its raw SQL needs a second connection
    location = _location(store, backend)
    for statement in ("UPDATE audit SET outcome = 'success'", "DELETE FROM audit"):
        with pytest.raises(Exception, match="append-only"):
            location.sql(statement)
    assert len(list(store.audit(AuditQuery()))) == 3


def _location(store: Backend, backend: str) -> IndexLocation:
    if backend == "postgres":
        return IndexLocation("postgres", store._url)  # type: ignore[union-attr]
    return IndexLocation("sqlite", store._path)  # type: ignore[union-attr]


def _studies(store: Backend, scope: Scope | None, level: Level = Level.STUDY) -> list[Any]:
    columns = (
        ((Level.PATIENT, "patient_id"), (Level.PATIENT, "number_of_patient_related_studies"))
        if level is Level.PATIENT
        else ((Level.STUDY, "study_instance_uid"),)
    )
    rows = store.find(Query(level, (), columns, scope=scope))
    return sorted(
        tuple(r.values()) if level is Level.PATIENT else r["study_instance_uid"] for r in rows
    )


def test_a_scope_limits_queries_and_patient_counts(store: Backend) -> None:
    lao_cai_name = "Bệnh Viện  LÀO CAI"
    store.add_instance(record("1", "1.1", "1.1.1", patient="P1", institution_name=lao_cai_name))
    store.add_instance(
        record("2", "1.2", "1.2.1", patient="P1", institution_name="Bệnh viện Bạch Mai")
    )
    store.add_instance(record("3", "1.3", "1.3.1", patient="P2", issuer_of_patient_id="LC-HIS"))
    store.add_instance(record("4", "1.4", "1.4.1", patient="P3"))
    assert _studies(store, None) == ["1.1", "1.2", "1.3", "1.4"]
    assert _studies(store, Scope.all()) == ["1.1", "1.2", "1.3", "1.4"]
    assert _studies(store, Scope.nothing()) == []
    lao_cai = Scope(institutions=frozenset({fold("bệnh viện lào cai")}))
    assert _studies(store, lao_cai) == ["1.1"]
    assert _studies(store, Scope(issuers=frozenset({fold("lc-his")}))) == ["1.3"]
    shared = lao_cai.with_studies(["1.4"])
    assert _studies(store, shared) == ["1.1", "1.4"]
    # Patients: seen through a visible study, counted by visible studies only.
    assert _studies(store, lao_cai, Level.PATIENT) == [("P1", 1)]
    assert _studies(store, None, Level.PATIENT) == [("P1", 2), ("P2", 1), ("P3", 1)]
    query = Query(Level.IMAGE, (), ((Level.IMAGE, "sop_instance_uid"),), scope=shared)
    assert sorted(r["sop_instance_uid"] for r in store.find(query)) == ["1", "4"]
    assert store.count(Query(Level.STUDY, (), (), scope=lao_cai)) == 1
    assert store.study_access("1.3") == ("", "LC-HIS", "P2")
    assert store.study_access("9.9") is None


def test_an_older_index_gets_its_institutions_folded(index_location: IndexLocation) -> None:
    """Migration 3 folds what was stored before it existed."""
    index = index_location.open()
    try:
        index.add_instance(record("1", "1.1", institution_name="Bệnh Viện Lào Cai"))
    finally:
        index.close()
    index_location.sql("UPDATE studies SET institution_name_fold = NULL")
    if index_location.kind == "postgres":
        index_location.sql("DELETE FROM schema_migrations WHERE version = 3")
        for table in ("users", "credentials", "shares", "audit"):
            index_location.sql(f"DROP TABLE {table}")
        index_location.sql("DROP FUNCTION pacs_audit_append_only CASCADE")
        for table, column in (
            ("studies", "institution_name_fold"),
            ("patients", "issuer_of_patient_id_fold"),
        ):
            index_location.sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        index_location.sql("PRAGMA user_version=2")
        for table in ("users", "credentials", "shares", "audit"):
            index_location.sql(f"DROP TABLE {table}")
        for index_name in ("studies_institution_name_fold", "patients_issuer_of_patient_id_fold"):
            index_location.sql(f"DROP INDEX {index_name}")
        for table, column in (
            ("studies", "institution_name_fold"),
            ("patients", "issuer_of_patient_id_fold"),
        ):
            index_location.sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    reopened = index_location.open()
    try:
        scope = Scope(institutions=frozenset({fold("bệnh viện lào cai")}))
        rows = list(
            reopened.find(
                Query(Level.STUDY, (), ((Level.STUDY, "study_instance_uid"),), scope=scope)
            )
        )
        assert [r["study_instance_uid"] for r in rows] == ["1.1"]
    finally:
        reopened.close()
