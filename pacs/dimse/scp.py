"""The archive's DICOM node: Verification, Storage and Query/Retrieve SCP.

pynetdicom runs every association in its own thread, so handlers call the
(thread-safe, synchronous) archive directly.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs.config import Settings
from pacs.core import Archive
from pacs.core.encoding import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.dimse import status
from pacs.dimse.find import Finder
from pacs.dimse.identifier import FIND_MODELS, GET_MODELS, MOVE_MODELS, permitted
from pacs.dimse.retrieve import ArchiveAssociation, Retrieval
from pacs.dimse.transport import TunedAE, TunedRequestHandler, cheaply_copied
from pacs.errors import PacsError
from pacs.types import AuditEvent, Caller, StoreOutcome, StoreResult

log = logging.getLogger(__name__)

# The ErrorComment element is LO: at most 64 characters (PS3.7 C.4, PS3.5 6.2).
_ERROR_COMMENT_LENGTH = 64


def handle_c_echo(event: evt.Event) -> int:
    """PS3.4 A.4: Verification always succeeds once the association is up."""
    return status.SUCCESS


@dataclass
class StoreTally:
    """What one association's C-STOREs came to, for a line in the log when it closes."""

    started: float = field(default_factory=time.monotonic)
    outcomes: dict[str, int] = field(default_factory=dict)
    refused: int = 0
    stored_bytes: int = 0
    studies: dict[str, None] = field(default_factory=dict)  # in order of arrival

    def count(self, result: StoreResult) -> None:
        name = result.outcome.value
        self.outcomes[name] = self.outcomes.get(name, 0) + 1
        if result.outcome in (StoreOutcome.STORED, StoreOutcome.REPLACED):
            self.stored_bytes += result.size
        self.studies[result.study_instance_uid] = None

    def summary(self) -> str:
        counts = [f"{number} {name}" for name, number in self.outcomes.items()]
        if self.refused:
            counts.append(f"{self.refused} refused")
        studies = list(self.studies)
        named = f"; study {studies[0]}" if studies else ""
        if len(studies) > 1:
            named += f" and {len(studies) - 1} more"
        return (
            f"{', '.join(counts)} ({self.stored_bytes / 1e6:.1f} MB stored) in"
            f" {time.monotonic() - self.started:.1f} s{named}"
        )


class StoreTallies:
    """One ``StoreTally`` per association that stored something.

    A log line for every instance cost ~0.3 ms of the server's CPU per
    C-STORE (Python's logging, at the default level), 7% of it; a modality's
    study is one line when its association closes, as storescp and dcm4chee
    summarise an association. Each instance stays in the log at level debug
    and in the audit trail.
    """

    def __init__(self) -> None:
        self._tallies: weakref.WeakKeyDictionary[Any, StoreTally] = weakref.WeakKeyDictionary()

    def of(self, assoc: Any) -> StoreTally:
        tally = self._tallies.get(assoc)
        if tally is None:
            tally = self._tallies[assoc] = StoreTally()
        return tally

    def pop(self, assoc: Any) -> StoreTally | None:
        return self._tallies.pop(assoc, None)


def handle_c_store(
    event: evt.Event, archive: Archive, settings: Settings, tallies: StoreTallies
) -> int | Dataset:
    """PS3.4 B.2.3: store the data set and answer with the outcome's status."""
    request = cast(C_STORE, event.request)
    dataset = request.DataSet
    if not isinstance(dataset, BytesIO):  # pynetdicom may spool to a file when so configured
        tallies.of(event.assoc).refused += 1
        return _failure(status.PROCESSING_FAILURE, "data set was not received in memory")
    requestor = event.assoc.requestor
    caller = Caller(ae_title=requestor.ae_title, address=requestor.address)
    if not permitted(settings, caller.ae_title, "store", caller.address):
        _audit(archive, "store", "denied", caller, detail="C-STORE: not allowed for this node")
        tallies.of(event.assoc).refused += 1
        return _failure(status.NOT_AUTHORIZED, f"{caller.ae_title} may not store here")
    try:
        result = archive.ingest(
            dataset.getvalue(),
            event.context.transfer_syntax,
            caller,
            sop_class_uid=request.AffectedSOPClassUID,
            sop_instance_uid=request.AffectedSOPInstanceUID,
        )
    except PacsError as exc:
        _audit(archive, "store", "failure", caller, detail=f"C-STORE: {exc}")
        tallies.of(event.assoc).refused += 1
        code = status.store_status(exc)
        log.warning(
            "C-STORE %s from %s refused (0x%04X): %s",
            request.AffectedSOPInstanceUID,
            caller,
            code,
            exc,
        )
        return _failure(code, str(exc))
    except Exception:
        # Outermost edge: keep the association and the server up, log once.
        log.exception("C-STORE %s from %s failed", request.AffectedSOPInstanceUID, caller)
        tallies.of(event.assoc).refused += 1
        return _failure(status.PROCESSING_FAILURE, "internal error while storing")
    _audit(archive, "store", "success", caller, result.study_instance_uid, "C-STORE")
    tallies.of(event.assoc).count(result)
    return status.SUCCESS


def handle_connection_closed(event: evt.Event, tallies: StoreTallies) -> None:
    """Log what an association that stored instances came to."""
    tally = tallies.pop(event.assoc)
    if tally is None:
        return
    requestor = event.assoc.requestor
    log.info(
        "C-STORE from %s (%s): %s",
        requestor.ae_title,
        requestor.address,
        tally.summary(),
    )


def handle_rejected(event: evt.Event, archive: Archive) -> None:
    """An association refused at negotiation (an unknown calling AE under
    ``known_nodes_only``, too many associations): audited as a refused node."""
    requestor = event.assoc.requestor
    caller = Caller(ae_title=requestor.ae_title, address=requestor.address)
    _audit(archive, "login", "denied", caller, detail="association refused")


def _audit(
    archive: Archive, action: str, outcome: str, caller: Caller, study: str = "", detail: str = ""
) -> None:
    archive.audit.record(
        AuditEvent(action, outcome, caller.ae_title, "node", caller.address, "", study, detail)
    )


def _failure(code: int, comment: str) -> Dataset:
    response = Dataset()
    response.Status = code
    # LO may not hold a backslash: it would split the comment into several values.
    response.ErrorComment = comment.replace("\\", "/")[:_ERROR_COMMENT_LENGTH]
    return response


Dispatcher = Callable[[socket.socket, tuple[str, int]], bool]
"""Given an accepted connection, hand it to another process and return True, or
return False to serve it here."""


class _AssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server that may pass connections to other processes,
    or (``listen=False``) only serves connections handed to it."""

    def __init__(
        self,
        *args: Any,
        listen: bool = True,
        dispatch: Dispatcher | None = None,
        retrieval: Retrieval | None = None,
        finder: Finder | None = None,
        **kwargs: Any,
    ) -> None:
        # Set before the base class binds (or, with listen=False, doesn't).
        self.listen = listen
        self.dispatch = dispatch
        self.retrieval = retrieval
        self.finder = finder
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.listen:
            super().server_bind()

    def server_activate(self) -> None:
        if self.listen:
            super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if self.dispatch is not None and self.dispatch(request, client_address):
            request.close()  # the other process holds its own duplicate
            return
        super().process_request(request, client_address)

    def serve_handed_over(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        super().process_request(request, client_address)

    def shutdown(self) -> None:
        if self.listen:
            super().shutdown()
            return
        # No accept loop ran (its socket was never bound): nothing to wait for.
        self.server_close()
        self.ae._servers.remove(self)


class _ArchiveRequestHandler(TunedRequestHandler):
    server: _AssociationServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # Same object, with C-FIND, C-MOVE and C-GET served by our own code.
        assoc.__class__ = ArchiveAssociation
        assert isinstance(assoc, ArchiveAssociation)
        assoc.retrieval = self.server.retrieval
        assoc.finder = self.server.finder
        return assoc


class DicomNode:
    """The AE that serves associations; started and stopped with the app.

    Several processes can serve one port: the one that listens passes some
    connections to the others through ``dispatch``; those are started with
    ``listen=False`` and get connections through ``serve_handed_over``.
    """

    def __init__(
        self,
        archive: Archive,
        settings: Settings,
        *,
        listen: bool = True,
        dispatch: Dispatcher | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``port`` and ``ssl_context``: a second node for DICOM over TLS (PS3.15 B.1)."""
        self.archive = archive
        self.settings = settings
        self.listen = listen
        self.dispatch = dispatch
        self.ssl_context = ssl_context
        self._port = port or settings.dicom_port
        self.ae = _build_ae(settings)
        self._server: _AssociationServer | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self.listen:
            return self._port
        return int(self._server.server_address[1])

    def start(self) -> None:
        tallies = StoreTallies()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, handle_c_echo),
            (evt.EVT_C_STORE, handle_c_store, [self.archive, self.settings, tallies]),
            (evt.EVT_CONN_CLOSE, handle_connection_closed, [tallies]),
            (evt.EVT_REJECTED, handle_rejected, [self.archive]),
        ]
        # What AE.start_server(block=False) does, plus our tuned request handler.
        server = self.ae.make_server(
            (self.settings.host, self._port),
            evt_handlers=handlers,
            contexts=cheaply_copied(self.ae.supported_contexts),
            server_class=_AssociationServer,
            request_handler=_ArchiveRequestHandler,
            listen=self.listen,
            dispatch=self.dispatch,
            retrieval=Retrieval(self.archive, self.settings),
            finder=Finder(self.archive, self.settings),
            ssl_context=self.ssl_context,
        )
        assert isinstance(server, _AssociationServer)
        if self.listen:
            thread = threading.Thread(
                target=server.serve_forever, name=f"dicom-acceptor-{self.port}", daemon=True
            )
            thread.start()
        # The AE tracks its servers so that AE.shutdown() and server.shutdown() work.
        self.ae._servers.append(server)
        self._server = server
        if self.listen:
            log.info(
                "DICOM node %s listening on %s:%d%s",
                self.settings.ae_title,
                self.settings.host,
                self.port,
                " (TLS)" if self.ssl_context is not None else "",
            )

    def serve_handed_over(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """Serve a connection that another process accepted."""
        assert self._server is not None, "start() the node first"
        self._server.serve_handed_over(sock, address)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()


def acceptance_order() -> list[str]:
    """Every transfer syntax, in the order we pick one when a context offers several.

    pynetdicom, as acceptor, takes the first syntax of *its own* list that the
    requestor proposed. Explicit VR Little Endian comes first, because it keeps
    every VR (private tags included) and is what we send back as stored; then
    the lossless compressed syntaxes, then the lossy ones (a sender that
    proposes only those has nothing better), then Implicit VR and Big Endian.
    DCMTK's storescp prefers explicit VR likewise.
    """

    def rank(uid: str) -> int:
        syntax = UID(uid)
        if syntax == ExplicitVRLittleEndian:
            return 0
        if syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian):
            return 3 if syntax == ImplicitVRLittleEndian else 4
        lossless = ("Lossless" in syntax.name and "Lossy" not in syntax.name) or syntax.is_deflated
        return 1 if lossless else 2

    return sorted(AllTransferSyntaxes, key=rank)  # stable: pydicom's order within a rank


def _build_ae(settings: Settings) -> TunedAE:
    ae = TunedAE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.network_timeout = settings.network_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.acse_timeout = settings.acse_timeout
    # Orthanc accepts any called AE title by default (DicomCheckCalledAet=false):
    # modalities are often configured with a slightly different one.
    ae.require_called_aet = False
    # A modality or another PACS moving images to us may connect in the middle
    # of a move; our own sub-associations must not wait forever to connect.
    ae.connection_timeout = settings.acse_timeout
    if settings.known_nodes_only:
        ae.require_calling_aet = [node.ae_title for node in settings.nodes]
    transfer_syntaxes = acceptance_order()
    ae.add_supported_context(Verification, transfer_syntaxes)
    # Only known storage SOP classes: unknown abstract syntaxes are refused at
    # negotiation (UNRESTRICTED_STORAGE_SERVICE stays off). Role selection is
    # accepted so that a C-GET requestor can act as the Storage SCP.
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(
            context.abstract_syntax, transfer_syntaxes, scu_role=True, scp_role=True
        )
    # Identifiers are small: the uncompressed syntaxes are all Q/R needs.
    identifier_syntaxes = [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ]
    for model in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(model, identifier_syntaxes)
    return ae
