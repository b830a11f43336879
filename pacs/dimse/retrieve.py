"""C-MOVE and C-GET SCPs (PS3.4 C.4.2, C.4.3), sending stored bytes as they are.

pynetdicom's own Q/R SCP wants a decoded pydicom ``Dataset`` per instance and
re-encodes it, and for C-MOVE proposes whatever contexts the AE was set up
with. Here each instance goes out as the stored bytes when the peer accepts the
stored transfer syntax (so a moved study is byte-identical), or converted by the
archive when it accepts only another; the sub-association proposes, per SOP
class, the stored syntaxes plus the node's preferred and the uncompressed ones.
Only one instance is in memory at a time.

``ArchiveAssociation`` routes C-FIND (to ``find.Finder``), C-MOVE and C-GET
requests here and leaves every other request to pynetdicom.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import code_to_category

from pacs.config import Node, Settings
from pacs.core import Archive
from pacs.dimse.find import Finder
from pacs.dimse.identifier import (
    CANCEL,
    ERROR_COMMENT_LENGTH,
    GET_MODELS,
    MOVE_MODELS,
    NOT_AUTHORIZED,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
    IdentifierError,
    node_scope,
    permitted,
    read_identifier,
)
from pacs.dimse.transport import next_message, paused_reactor
from pacs.errors import NotFoundError, OutsideScopeError, PacsError
from pacs.index.base import StoredInstance
from pacs.types import AuditEvent

log = logging.getLogger(__name__)

WARNING_SUBOPERATIONS = 0xB000
UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
_MAX_COUNT = 0xFFFF  # the sub-operation counts are US
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass
class _Progress:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)


class Retrieval:
    """Serves C-MOVE and C-GET requests for one archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.settings = settings

    def serve(
        self, assoc: Association, request: C_MOVE | C_GET, context: PresentationContext
    ) -> None:
        is_move = isinstance(request, C_MOVE)
        response: C_MOVE | C_GET = C_MOVE() if is_move else C_GET()
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        send = _Responder(assoc, response, context)
        calling = assoc.requestor.ae_title
        address = assoc.requestor.address
        service = "move" if is_move else "get"
        if not permitted(self.settings, calling, service, address):
            self._audit("denied", calling, address, f"C-{service.upper()}: not allowed")
            send.failure(NOT_AUTHORIZED, f"{calling} may not retrieve from this archive")
            return
        try:
            instances = self._instances(request, context, is_move, calling, address)
        except IdentifierError as exc:
            send.failure(exc.status, str(exc))
            return
        except PacsError as exc:
            send.failure(UNABLE_TO_PROCESS, str(exc))
            return

        if is_move:
            assert isinstance(request, C_MOVE)
            destination = self.settings.node(str(request.MoveDestination or ""))
            if destination is None:
                log.warning(
                    "C-MOVE from %s to unknown %r refused", calling, request.MoveDestination
                )
                send.failure(
                    MOVE_DESTINATION_UNKNOWN,
                    f"move destination {request.MoveDestination!s:.16} is not a known node",
                )
                return
            if not instances:
                send.final(_Progress(0))
                return
            store_assoc = self._associate(assoc, destination, instances)
            if store_assoc is None:
                # As DCMTK's dcmqrscp does: every sub-operation failed (A702).
                send.failure(
                    UNABLE_TO_PERFORM_SUBOPERATIONS,
                    f"cannot associate with {destination}",
                    failed=len(instances),
                )
                return
            preferred: Sequence[str] = destination.transfer_syntaxes
            originator = (calling, int(request.MessageID or 0))
        else:
            # The requestor's order is lost in negotiation: send as stored when it
            # accepted that, else convert (see _ordered).
            store_assoc, preferred, originator = assoc, (), None
            if not instances:
                send.final(_Progress(0))
                return

        progress = _Progress(remaining=len(instances))
        try:
            # Our own sub-association's reactor is held for the whole move: we
            # are its only user, and pausing it per instance raced with its
            # wake-up (it could take a C-STORE response meant for us). A C-GET
            # runs inside the requestor's reactor, which is already paused.
            pause = paused_reactor(store_assoc) if is_move else contextlib.nullcontext()
            with pause:
                self._send_all(
                    assoc, store_assoc, request, instances, preferred, originator, progress, send
                )
        finally:
            if store_assoc is not assoc and store_assoc.is_established:
                store_assoc.release()
        log.info(
            "C-%s from %s: %d sent, %d failed, %d warnings, %d left",
            service.upper(),
            calling,
            progress.completed,
            progress.failed,
            progress.warning,
            progress.remaining,
        )
        target = f" to {getattr(request, 'MoveDestination', '')}" if is_move else ""
        for study in sorted({s.study_instance_uid for s in instances}):
            self._audit(
                "success" if not progress.failed else "failure",
                calling,
                address,
                f"C-{service.upper()}{target}: {progress.completed} sent, {progress.failed} failed",
                study,
            )

    def _instances(
        self,
        request: C_MOVE | C_GET,
        context: PresentationContext,
        is_move: bool,
        calling: str,
        address: str,
    ) -> list[StoredInstance]:
        """What the identifier names, within what the calling node may see."""
        models = MOVE_MODELS if is_move else GET_MODELS
        model = models[str(request.AffectedSOPClassUID)]
        query = read_identifier(request.Identifier, context.transfer_syntax[0], model)
        scope = node_scope(self.settings, calling)
        if not scope.everything:
            for study in str(query.keys.get("StudyInstanceUID") or "").split("\\"):
                try:
                    if study.strip():
                        self.archive.require_visible(scope, study.strip())
                except NotFoundError as exc:
                    if isinstance(exc, OutsideScopeError):  # known to us, not to the caller
                        self._audit("denied", calling, address, "outside its scope", study)
        return self.archive.instances_to_retrieve(query.level, query.keys, scope)

    def _audit(
        self, outcome: str, calling: str, address: str, detail: str, study: str = ""
    ) -> None:
        self.archive.audit.record(
            AuditEvent("retrieve", outcome, calling, "node", address, "", study, detail)
        )

    def _associate(
        self, assoc: Association, destination: Node, instances: list[StoredInstance]
    ) -> Association | None:
        contexts = _proposed_contexts(instances, destination.transfer_syntaxes)
        store_assoc = assoc.ae.associate(
            destination.host,
            destination.port,
            contexts=contexts,
            ae_title=destination.ae_title,
            max_pdu=self.settings.max_pdu_size,
        )
        if not store_assoc.is_established:
            log.warning("cannot associate with move destination %s", destination)
            return None
        return store_assoc

    def _send_all(
        self,
        assoc: Association,
        store_assoc: Association,
        request: C_MOVE | C_GET,
        instances: list[StoredInstance],
        preferred: Sequence[str],
        originator: tuple[str, int] | None,
        progress: _Progress,
        send: _Responder,
    ) -> None:
        message_id = int(request.MessageID or 0)
        sub_message_id = 0
        for index, stored in enumerate(instances):
            if message_id in assoc.dimse.cancel_req:
                progress.failed_uids += [s.sop_instance_uid for s in instances[index:]]
                send.cancelled(progress)
                return
            if not (assoc.is_established and store_assoc.is_established):
                progress.failed += progress.remaining
                progress.failed_uids += [s.sop_instance_uid for s in instances[index:]]
                progress.remaining = 0
                break
            sub_message_id = sub_message_id % 0xFFFF + 1
            category = self._send_one(store_assoc, stored, preferred, sub_message_id, originator)
            progress.remaining -= 1
            if category == "Success":
                progress.completed += 1
            elif category == "Warning":
                progress.warning += 1
            else:
                progress.failed += 1
                progress.failed_uids.append(stored.sop_instance_uid)
            if progress.remaining:
                send.pending(progress)
        if assoc.is_established:
            send.final(progress)

    def _send_one(
        self,
        store_assoc: Association,
        stored: StoredInstance,
        preferred: Sequence[str],
        message_id: int,
        originator: tuple[str, int] | None,
    ) -> str:
        contexts = {
            str(cx.transfer_syntax[0]): cx
            for cx in store_assoc.accepted_contexts
            if cx.abstract_syntax == stored.sop_class_uid
            and (store_assoc.is_requestor or cx.as_scu)
        }
        if not contexts:
            log.warning(
                "%s not sent: the peer accepted no context for SOP class %s",
                stored.sop_instance_uid,
                stored.sop_class_uid,
            )
            return "Failure"
        accepted = _ordered(list(contexts), preferred, stored.transfer_syntax_uid)
        try:
            transfer_syntax, data = self.archive.dataset_for_transfer(stored, accepted)
        except PacsError as exc:
            log.warning("%s not sent: %s", stored.sop_instance_uid, exc)
            return "Failure"
        request = C_STORE()
        request.MessageID = message_id
        request.AffectedSOPClassUID = stored.sop_class_uid
        request.AffectedSOPInstanceUID = stored.sop_instance_uid
        request.Priority = 0  # MEDIUM
        if originator is not None:
            request.MoveOriginatorApplicationEntityTitle = originator[0]
            request.MoveOriginatorMessageID = originator[1]
        request.DataSet = BytesIO(data)
        del data
        status = _exchange(store_assoc, request, contexts[transfer_syntax])
        if status is None:
            log.warning(
                "%s: no C-STORE response; aborting the association", stored.sop_instance_uid
            )
            store_assoc.abort()
            return "Failure"
        category = code_to_category(status)
        if category not in ("Success", "Warning"):
            log.warning(
                "%s refused by the peer with status 0x%04X", stored.sop_instance_uid, status
            )
        return str(category)


def _exchange(assoc: Association, request: C_STORE, context: PresentationContext) -> int | None:
    """Send a C-STORE request and wait for its response; ``None`` on DIMSE timeout.

    The association's reactor must be paused (see ``Retrieval.serve``).
    """
    assert context.context_id is not None
    assoc.dimse.send_msg(request, context.context_id)
    while True:
        response = next_message(assoc)
        if response is None:
            return None
        if (
            isinstance(response, C_STORE)
            and response.MessageIDBeingRespondedTo == request.MessageID
        ):
            return int(response.Status or 0)
        log.warning(
            "ignoring unexpected %s while waiting for a C-STORE response",
            type(response).__name__,
        )


def _proposed_contexts(
    instances: list[StoredInstance], preferred: Sequence[str]
) -> list[PresentationContext]:
    """Per SOP class: one context per preferred and per stored syntax, then one
    with the uncompressed fall-backs.

    One syntax per context, because a destination accepts one syntax per
    context and chooses by its own order: this way it can accept each syntax
    it supports, and we choose among them (``_ordered``). When that makes more
    than 128 contexts, one context per SOP class carries them all.
    """
    stored: dict[str, list[str]] = {}
    for instance in instances:
        syntaxes = stored.setdefault(instance.sop_class_uid, [])
        if instance.transfer_syntax_uid not in syntaxes:
            syntaxes.append(instance.transfer_syntax_uid)
    contexts = []
    for sop_class, syntaxes in stored.items():
        singles = list(dict.fromkeys([*preferred, *syntaxes]))
        contexts += [build_context(sop_class, [syntax]) for syntax in singles]
        fallback: list[str] = [str(ts) for ts in _UNCOMPRESSED if ts not in singles]
        if fallback:
            contexts.append(build_context(sop_class, fallback))
    if len(contexts) > _MAX_CONTEXTS:
        contexts = [
            build_context(sop_class, list(dict.fromkeys([*preferred, *syntaxes, *_UNCOMPRESSED])))
            for sop_class, syntaxes in stored.items()
        ]
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("more than %d SOP classes to send; the rest will fail", _MAX_CONTEXTS)
    return contexts[:_MAX_CONTEXTS]


def _ordered(accepted: list[str], preferred: Sequence[str], stored: str) -> list[str]:
    """The node's preferences first, then the stored syntax, then the rest."""
    rank = {ts: i for i, ts in enumerate(dict.fromkeys([*preferred, stored]))}
    return sorted(accepted, key=lambda ts: rank.get(ts, len(rank)))


class _Responder:
    """Builds and sends the C-MOVE/C-GET responses of one request (PS3.4 C.4.2.3)."""

    def __init__(
        self, assoc: Association, response: C_MOVE | C_GET, context: PresentationContext
    ) -> None:
        self.assoc = assoc
        self.response = response
        self.context = context

    def pending(self, progress: _Progress) -> None:
        self._send(PENDING, progress, remaining=True)

    def cancelled(self, progress: _Progress) -> None:
        self._send(CANCEL, progress, remaining=True, failed_uids=progress.failed_uids)

    def final(self, progress: _Progress) -> None:
        if not progress.failed and not progress.warning:
            self._send(SUCCESS, progress)
        elif progress.failed and not progress.completed and not progress.warning:
            self._send(UNABLE_TO_PERFORM_SUBOPERATIONS, progress, failed_uids=progress.failed_uids)
        else:
            self._send(WARNING_SUBOPERATIONS, progress, failed_uids=progress.failed_uids)

    def failure(self, status: int, comment: str, failed: int = 0) -> None:
        self._send(
            status,
            _Progress(0, failed=failed) if failed else None,
            comment=comment,
        )

    def _send(
        self,
        status: int,
        progress: _Progress | None,
        *,
        remaining: bool = False,
        failed_uids: list[str] | None = None,
        comment: str = "",
    ) -> None:
        response = self.response
        response.Status = status
        response.Identifier = None
        response.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_LENGTH] or None  # type: ignore[assignment]
        response.NumberOfRemainingSuboperations = (
            min(progress.remaining, _MAX_COUNT) if progress and remaining else None
        )
        response.NumberOfCompletedSuboperations = _count(progress, "completed")
        response.NumberOfFailedSuboperations = _count(progress, "failed")
        response.NumberOfWarningSuboperations = _count(progress, "warning")
        if failed_uids:
            identifier = Dataset()
            identifier.FailedSOPInstanceUIDList = failed_uids
            syntax = UID(self.context.transfer_syntax[0])
            encoded: Any = encode(
                identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
            )
            response.Identifier = BytesIO(encoded)
        assert self.context.context_id is not None
        self.assoc.dimse.send_msg(response, self.context.context_id)


def _count(progress: _Progress | None, name: str) -> int | None:
    return None if progress is None else min(int(getattr(progress, name)), _MAX_COUNT)


class ArchiveAssociation(Association):
    """An acceptor association whose C-FIND, C-MOVE and C-GET requests are
    served by ``Finder`` and ``Retrieval``; anything else by pynetdicom."""

    finder: Finder | None = None
    retrieval: Retrieval | None = None

    def _serve_request(self, msg: Any, context_id: int) -> None:
        context = self._accepted_cx.get(context_id)
        serve: Callable[[], None] | None = None
        if context is not None and msg.is_valid_request and not self._sent_release:
            if isinstance(msg, C_FIND) and self.finder is not None:
                finder = self.finder
                serve = lambda: finder.serve(self, msg, context)  # noqa: E731
            elif isinstance(msg, C_MOVE | C_GET) and self.retrieval is not None:
                retrieval = self.retrieval
                serve = lambda: retrieval.serve(self, msg, context)  # noqa: E731
        if serve is None:
            super()._serve_request(msg, context_id)
            return
        # What pynetdicom's _serve_request does around a service class's SCP(),
        # except that a C-CANCEL already received for this very request is kept.
        self.dimse.cancel_req = {
            k: v for k, v in self.dimse.cancel_req.items() if k == msg.MessageID
        }
        self._is_paused = True
        try:
            serve()
        except Exception:
            log.exception("%s failed", type(msg).__name__)
            if self.is_established:
                self.abort()
        finally:
            self._is_paused = False
            self.dimse.cancel_req = {}
