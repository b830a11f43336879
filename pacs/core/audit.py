"""The audit trail: who did what to which patient's study, when, from where, and how it ended.

Events are appended to the index (``AccessStore.append_audit``) by a
background writer, in batches, so that a viewer fetching 300 frames does
not wait for 300 commits; a burst of the same retrieval (same caller, study
and outcome within one batch) becomes one event with a count. The
store only ever inserts: its tables refuse UPDATE and DELETE (triggers), and
no HTTP or DIMSE service can write to it.

Each event maps to a DICOM audit message (PS3.15 A.5, IHE ATNA): its
``action`` names the Event ID and Event Type codes (DCM, CID 400/401) and the
Event Action Code; ``outcome`` the Event Outcome Indicator (0 success,
4 minor failure: refused, 8 serious failure: error); ``actor`` the active
participant (user or AE title, with ``address`` its network access point);
``patient_id`` and ``study_uid`` the participant objects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pacs.types import AuditEvent

log = logging.getLogger(__name__)

_FLUSH_SECONDS = 0.25
# Asked many times in a row: a viewer fetching a series' frames, a modality sending a study.
_COALESCED = frozenset(("retrieve", "store"))
_BATCH = 500

# action -> (Event ID, Event Type code or "", Event Action Code), PS3.15 A.5.1 and CID 400/401.
ATNA: dict[str, tuple[tuple[str, str], tuple[str, str] | None, str]] = {
    "login": (("110114", "User Authentication"), ("110122", "Login"), "E"),
    "logout": (("110114", "User Authentication"), ("110123", "Logout"), "E"),
    "query": (("110112", "Query"), None, "E"),
    "retrieve": (("110106", "Export"), None, "R"),
    "store": (("110107", "Import"), None, "C"),
    "share": (("110113", "Security Alert"), ("110135", "Object Security Attributes Changed"), "U"),
    "unshare": (
        ("110113", "Security Alert"),
        ("110135", "Object Security Attributes Changed"),
        "U",
    ),
    "delete": (("110105", "DICOM Study Deleted"), None, "D"),
    "deidentify": (("110106", "Export"), None, "R"),
    "user": (("110113", "Security Alert"), ("110137", "User Security Attributes Changed"), "U"),
    "token": (("110113", "Security Alert"), ("110137", "User Security Attributes Changed"), "U"),
    "config": (("110100", "Application Activity"), ("110129", "Security Configuration"), "E"),
}
OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}


def atna_message(event: AuditEvent) -> dict[str, Any]:
    """The event as JSON named after PS3.15 A.5 audit message concepts."""
    (event_code, event_name), event_type, action_code = ATNA.get(
        event.action, (("110100", "Application Activity"), None, "E")
    )
    message: dict[str, Any] = {
        "EventDateTime": event.time,
        "EventID": {"code": event_code, "codingScheme": "DCM", "meaning": event_name},
        "EventActionCode": action_code,
        "EventOutcomeIndicator": OUTCOMES.get(event.outcome, "8"),
        "ActiveParticipant": {
            "UserID": event.actor,
            "UserKind": event.actor_kind,
            "UserIsRequestor": True,
            "NetworkAccessPointID": event.address,
        },
        "action": event.action,
        "outcome": event.outcome,
        "count": event.count,
    }
    if event_type is not None:
        message["EventTypeCode"] = {
            "code": event_type[0],
            "codingScheme": "DCM",
            "meaning": event_type[1],
        }
    objects = []
    if event.patient_id:
        objects.append({"ParticipantObjectTypeCodeRole": "Patient", "ID": event.patient_id})
    if event.study_uid:
        objects.append({"ParticipantObjectTypeCodeRole": "Study", "ID": event.study_uid})
    if objects:
        message["ParticipantObjectIdentification"] = objects
    if event.detail:
        message["EventOutcomeDescription"] = event.detail
    return message


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditTrail:
    """Records events through ``append`` (the store's insert) from one background thread.

    Events are written every quarter of a second, in one batch; retrievals
    (or stores) of the same study by the same caller with the same outcome
    within a batch are one event with a count (a viewer loading a series asks
    for each frame; a modality sends each image). ``record`` never blocks on
    the store and never raises: a failed write is logged and retried with the
    next batch; it does not refuse care.
    ``close`` writes what is left.
    """

    def __init__(
        self,
        append: Callable[[Sequence[AuditEvent]], None],
        patient_of: Callable[[str], str] | None = None,
    ) -> None:
        self._append = append
        self._patient_of = patient_of
        """Study UID -> Patient ID, for events that name only the study (HTTP
        requests name a study in their path): filled in by the writer, off the
        request path, so that ``pacs audit --patient`` finds them too."""
        self._pending: list[AuditEvent] = []
        self._retrievals: dict[tuple[str, ...], int] = {}
        """(action, actor, address, study, outcome) -> index in ``_pending``."""
        self._repeats: dict[int, int] = {}
        """Index in ``_pending`` -> further occurrences of that event."""
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        with self._lock:
            if event.action in _COALESCED:
                key = (event.action, event.actor, event.address, event.study_uid, event.outcome)
                index = self._retrievals.get(key)
                if index is not None:
                    # Counted here, made into the event once per batch (``_take``):
                    # a viewer's frames are hundreds of records a second.
                    self._repeats[index] = self._repeats.get(index, 0) + event.count
                    return
                self._retrievals[key] = len(self._pending)
            self._pending.append(event if event.time else replace(event, time=now_iso()))
            if len(self._pending) >= _BATCH:
                self._lock.notify()

    def flush(self) -> None:
        """Write what is pending now (tests, ``pacs audit``, ``close``)."""
        self._write(self._take())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)
        self.flush()

    def _take(self) -> list[AuditEvent]:
        with self._lock:
            batch, self._pending, self._retrievals = self._pending, [], {}
            repeats, self._repeats = self._repeats, {}
        for index, more in repeats.items():
            batch[index] = replace(batch[index], count=batch[index].count + more)
        return batch

    def _with_patients(self, batch: list[AuditEvent]) -> list[AuditEvent]:
        if self._patient_of is None:
            return batch
        known: dict[str, str] = {}
        filled = []
        for event in batch:
            if event.study_uid and not event.patient_id:
                if event.study_uid not in known:
                    try:
                        known[event.study_uid] = self._patient_of(event.study_uid)
                    except Exception:  # an unknown study, or the index busy: left as it is
                        log.debug("no patient for study %s", event.study_uid, exc_info=True)
                        known[event.study_uid] = ""
                event = replace(event, patient_id=known[event.study_uid])
            filled.append(event)
        return filled

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._closed:
                    self._lock.wait(_FLUSH_SECONDS)
                closed = self._closed
            self._write(self._take())
            if closed:
                return

    def _write(self, batch: list[AuditEvent]) -> None:
        if not batch:
            return
        try:
            self._append(self._with_patients(batch))
        except Exception:  # the outermost edge of the writer thread
            log.exception(
                "could not write %d audit events; retrying with the next batch", len(batch)
            )
            with self._lock:
                self._pending[:0] = batch
                self._retrievals = {}
                self._repeats = {i + len(batch): n for i, n in self._repeats.items()}
            time.sleep(1.0)
