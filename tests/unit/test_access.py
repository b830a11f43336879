"""pacs.core.access and pacs.core.audit: the rules, without storage or network."""

from __future__ import annotations

import threading
import time

import pytest

from pacs.core.access import (
    ANONYMOUS,
    LINK_PREFIX,
    TOKEN_PREFIX,
    LoginThrottle,
    Permission,
    Principal,
    Role,
    hash_password,
    new_secret,
    parse_duration,
    parse_secret,
    password_problem,
    same_digest,
    user_scope,
    verify_password,
)
from pacs.core.audit import AuditTrail, atna_message
from pacs.types import AuditEvent, Scope


def test_password_hashes_verify_and_differ_by_salt() -> None:
    first, second = hash_password("correct horse 1"), hash_password("correct horse 1")
    assert first != second and first.startswith("$argon2id$")
    assert verify_password("correct horse 1", first)
    assert not verify_password("correct horse 2", first)
    assert not verify_password("correct horse 1", "not a hash")
    assert "correct horse" not in first


@pytest.mark.parametrize(
    ("password", "problem"),
    [("short", "at least"), (" padded password ", "spaces"), ("tab\tin a password", "control")],
)
def test_weak_passwords_are_refused(password: str, problem: str) -> None:
    assert problem in (password_problem(password) or "")
    assert password_problem("Nguyễn-Văn-An-2026") is None


def test_secrets_are_shown_once_and_kept_as_digests() -> None:
    secret = new_secret(TOKEN_PREFIX)
    assert secret.text.startswith(f"{TOKEN_PREFIX}_{secret.identifier}.")
    assert secret.digest not in secret.text
    parsed = parse_secret(secret.text, TOKEN_PREFIX)
    assert parsed is not None and parsed[0] == secret.identifier
    assert same_digest(parsed[1], secret.digest)
    tampered = secret.text[:-1] + ("A" if secret.text[-1] != "A" else "B")
    assert not same_digest(parse_secret(tampered, TOKEN_PREFIX)[1], secret.digest)  # type: ignore[index]
    for bad in ("", "pacs_", "pacs_short.x", f"{LINK_PREFIX}_{secret.identifier}.x", "garbage"):
        assert parse_secret(bad, TOKEN_PREFIX) is None


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    assert parse_duration("90m") == 5400
    assert parse_duration("7") == 7 * 86400
    for bad in ("", "0d", "-1d", "soon", "20y"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_roles_and_scopes() -> None:
    hospital = user_scope(Role.HOSPITAL, ["Bệnh viện Đa khoa Tỉnh  Lào Cai"], ["LC-HIS"])
    assert hospital.allows("1.2", "bệnh viện đa khoa tỉnh lào cai", None)
    assert hospital.allows("1.2", None, "lc-his")
    assert not hospital.allows("1.2", "Bệnh viện Bạch Mai", "BM-HIS")
    assert not hospital.allows("1.2", None, None)
    assert hospital.with_studies(["1.2"]).allows("1.2", "Bệnh viện Bạch Mai", None)
    assert user_scope(Role.RADIOLOGIST, [], []).everything
    assert user_scope(Role.MODALITY, ["X"], []).empty
    radiologist = Principal("dr", Role.RADIOLOGIST, Scope.all())
    assert radiologist.may(Permission.READ) and radiologist.may(Permission.SHARE)
    assert not radiologist.may(Permission.MANAGE)
    assert not Principal("ct1", Role.MODALITY, Scope.nothing()).may(Permission.READ)
    link = Principal("link", Role.HOSPITAL, Scope(study_uids=frozenset({"1.2"})), via="share-link")
    assert link.may(Permission.READ) and not link.may(Permission.STORE)
    assert ANONYMOUS.may(Permission.MANAGE) and ANONYMOUS.scope.everything


def test_login_throttle_per_user_and_per_address() -> None:
    throttle = LoginThrottle(limit=3, address_limit=3, window=60)
    for second in range(3):
        assert throttle.wait("anna", "10.0.0.1", now=second) == 0
        throttle.failed("anna", "10.0.0.1", now=second)
    assert throttle.wait("anna", "10.0.0.2", now=3) > 0  # the user, from anywhere
    assert throttle.wait("bob", "10.0.0.1", now=3) > 0  # the address, for anyone
    assert throttle.wait("bob", "10.0.0.2", now=3) == 0
    assert throttle.wait("anna", "10.0.0.2", now=61) == 0  # the window moved on
    throttle.failed("carl", "10.0.0.3", now=100)
    throttle.succeeded("carl", "10.0.0.3")
    assert throttle.wait("carl", "10.0.0.9", now=100) == 0


def test_audit_events_map_to_ps3_15_codes() -> None:
    event = AuditEvent(
        "retrieve", "denied", "hospital-a", "user", "10.1.1.1", "PAT-1", "1.2.3", "frames"
    )
    atna = atna_message(event)
    assert atna["EventID"]["code"] == "110106" and atna["EventActionCode"] == "R"
    assert atna["EventOutcomeIndicator"] == "4"
    assert atna["ActiveParticipant"]["UserID"] == "hospital-a"
    roles = {
        o["ParticipantObjectTypeCodeRole"]: o["ID"] for o in atna["ParticipantObjectIdentification"]
    }
    assert roles == {"Patient": "PAT-1", "Study": "1.2.3"}
    login = atna_message(AuditEvent("login", "failure", "anna", "user"))
    assert login["EventTypeCode"]["code"] == "110122"


def test_audit_trail_batches_and_coalesces_retrievals() -> None:
    written: list[AuditEvent] = []
    lock = threading.Lock()

    def append(batch: object) -> None:
        with lock:
            written.extend(batch)  # type: ignore[arg-type]

    trail = AuditTrail(append)
    for _ in range(300):
        trail.record(AuditEvent("retrieve", "success", "dr", "user", "::1", "P", "1.2", "frame"))
    trail.record(AuditEvent("query", "success", "dr", "user", "::1", detail="QIDO"))
    trail.close()
    retrievals = [e for e in written if e.action == "retrieve"]
    assert sum(e.count for e in retrievals) == 300 and len(retrievals) <= 3
    assert [e.action for e in written].count("query") == 1
    assert all(e.time for e in written)


def test_audit_trail_keeps_every_count_across_a_failed_write() -> None:
    """Repeats are counted apart and folded in per batch; a batch put back
    after a failed write must keep its counts, and those recorded meanwhile."""
    failed = threading.Event()
    written: list[AuditEvent] = []

    def append(batch: object) -> None:
        if not failed.is_set():
            failed.set()
            raise OSError("index unavailable")
        written.extend(batch)  # type: ignore[arg-type]

    trail = AuditTrail(append)
    frame = AuditEvent("retrieve", "success", "dr", "user", "::1", "P", "1.2", "frame")
    for _ in range(5):
        trail.record(frame)
    assert failed.wait(10)
    for _ in range(3):
        trail.record(frame)
    trail.record(AuditEvent("retrieve", "success", "dr", "user", "::1", "P", "1.3", "frame"))
    trail.close()
    counts: dict[str, int] = {}
    for event in written:
        counts[event.study_uid] = counts.get(event.study_uid, 0) + event.count
    assert counts == {"1.2": 8, "1.3": 1}


def test_audit_trail_survives_a_failing_store() -> None:
    calls: list[int] = []
    written: list[AuditEvent] = []

    def append(batch: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("index unavailable")
        written.extend(batch)  # type: ignore[arg-type]

    trail = AuditTrail(append)
    trail.record(AuditEvent("login", "success", "anna", "user"))
    deadline = time.monotonic() + 10
    while not written and time.monotonic() < deadline:
        time.sleep(0.05)
    trail.close()
    assert [e.actor for e in written] == ["anna"]
