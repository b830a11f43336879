"""C-FIND SCP for the Patient Root, Study Root and Patient/Study Only models (PS3.4 C.4.1).

Served outside pynetdicom's C-FIND handler, for speed: through it each match
became a pydicom ``Dataset``, was encoded by pydicom, and its command set
encoded again, about 1 ms per match (50 ms for a name search matching 40
studies). Here the response's elements are planned once per query and each
match is written straight to bytes (Implicit or Explicit VR Little Endian;
other syntaxes go through pydicom), behind a command set encoded once.
"""

from __future__ import annotations

import logging
import select
import struct
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from pacs.config import Settings
from pacs.core import Archive
from pacs.dimse.identifier import (
    CANCEL,
    ERROR_COMMENT_LENGTH,
    FIND_MODELS,
    NOT_AUTHORIZED,
    PENDING,
    STUDY_ROOT,
    SUCCESS,
    UNABLE_TO_PROCESS,
    IdentifierError,
    node_scope,
    permitted,
    read_identifier,
)
from pacs.dimse.transport import BatchingDUL, p_data_tf, send_encoded_pdus
from pacs.errors import PacsError
from pacs.index.schema import LEVELS, UNIQUE_KEYS, Level
from pacs.types import AuditEvent

log = logging.getLogger(__name__)

_LONG_VRS = frozenset(
    ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
)
_BINARY_NUMBERS = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}
_SPECIFIC_CHARACTER_SET = 0x00080005
_UTF8 = convert_encodings(["ISO_IR 192"])
# Matches between two yields of the GIL to the DUL thread (which sends what is
# queued and sees a C-CANCEL). Yielding after every match made the two threads
# trade the GIL per response: a week of studies (~190 matches) took 44 ms of
# CPU; every 16 to 64 matches, 18-22 ms, and findscu's wait fell from ~50 to
# ~22-27 ms. 16 keeps a C-CANCEL prompt on a busy machine.
_YIELD_EVERY = 16
# Pending responses handed to the DUL thread at once, at most (and at every yield).
_BATCH_BYTES = 256 * 1024


class Finder:
    """Serves C-FIND requests for one archive."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self.archive = archive
        self.settings = settings

    def serve(self, assoc: Association, request: C_FIND, context: PresentationContext) -> None:
        """PS3.4 C.4.1.2: one pending response per match, then success; stop on C-CANCEL.

        Every requested key is returned, empty when the index does not hold it,
        and the unique keys of the query level and the levels above are always
        included (C.4.1.2.2, hierarchical). Like dcm4chee, responses also name
        the AE to retrieve from (Retrieve AE Title) and say the images are ONLINE.
        """
        send = _Responder(assoc, request, context)
        calling = assoc.requestor.ae_title
        address = assoc.requestor.address
        if not permitted(self.settings, calling, "find", address):
            self._audit("denied", calling, address, "C-FIND: not allowed for this node")
            send.status(NOT_AUTHORIZED, f"{calling} may not query this archive")
            return
        model = FIND_MODELS[str(request.AffectedSOPClassUID)]
        syntax = UID(context.transfer_syntax[0])
        try:
            query = read_identifier(request.Identifier, syntax, model)
        except IdentifierError as exc:
            send.status(exc.status, str(exc))
            return

        levels = LEVELS[: LEVELS.index(query.level) + 1]
        if model == STUDY_ROOT:
            levels = levels[1:]
        unique_keys = [UNIQUE_KEYS[level].keyword for level in levels]
        requested = [e.keyword for e in query.elements if e.keyword and e.VR != "SQ"]
        sequences = _requested_sequences(query.elements)
        encode_match = _plan(query.level, query.elements, unique_keys, self.settings, syntax)
        own_key = UNIQUE_KEYS[query.level].keyword
        count = 0
        try:
            matches = self.archive.search(
                query.level,
                query.keys,
                list(dict.fromkeys(requested + unique_keys)),
                case_insensitive_names=self.settings.case_insensitive_names,
                scope=node_scope(self.settings, calling),
            )
            for values in matches:
                if not assoc.is_established:
                    log.info("C-FIND from %s: association gone after %d matches", calling, count)
                    return
                if request.MessageID in assoc.dimse.cancel_req:
                    log.info("C-FIND from %s cancelled after %d matches", calling, count)
                    send.status(CANCEL)
                    return
                count += 1
                if sequences:
                    values.update(
                        _sequence_items(
                            self.archive.sequences(query.level, values[own_key], list(sequences)),
                            sequences,
                        )
                    )
                send.pending(encode_match(values))
                if count == 1 or count % _YIELD_EVERY == 0:
                    send.flush()
                    time.sleep(0)  # the first response leaves at once
                    _let_the_peer_be_heard(assoc, request.MessageID)
        except PacsError as exc:
            send.status(UNABLE_TO_PROCESS, str(exc))
            return
        except Exception:
            log.exception("C-FIND from %s failed", calling)
            send.status(UNABLE_TO_PROCESS, "internal error while searching")
            return
        log.info("C-FIND %s level from %s: %d matches", query.level.value, calling, count)
        keys = ", ".join(f"{k}={v}" for k, v in query.keys.items() if v)
        self._audit(
            "success",
            calling,
            address,
            f"C-FIND {query.level.value} {keys}: {count} matches",
            str(query.keys.get("StudyInstanceUID") or ""),
        )
        send.status(SUCCESS)

    def _audit(
        self, outcome: str, calling: str, address: str, detail: str, study: str = ""
    ) -> None:
        self.archive.audit.record(
            AuditEvent("query", outcome, calling, "node", address, "", study, detail)
        )


def _let_the_peer_be_heard(assoc: Association, message_id: int | None) -> None:
    """When the peer has sent something (a C-CANCEL, an A-ABORT) that the DUL
    thread has not read yet, give it up to 5 ms to do so before the next batch.

    A search answers a batch of 16 matches in well under a millisecond, so
    without this a C-CANCEL sent after the first response could arrive only
    after the last one. The check is one ``poll`` per batch; the wait happens
    only while the peer is talking, which in a C-FIND it rarely does.
    """
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is None:
        return
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 0.005
    while poller.poll(0) and message_id not in assoc.dimse.cancel_req:
        if time.monotonic() > deadline or not assoc.is_established:
            return
        time.sleep(0.0002)


Element = tuple[int, str, Callable[[dict[str, Any]], Any]]


def _plan(
    level: Level,
    elements: tuple[Any, ...],
    unique_keys: list[str],
    settings: Settings,
    syntax: UID,
) -> Callable[[dict[str, Any]], bytes]:
    """How to turn one match (keyword -> value) into identifier bytes."""
    planned: dict[int, Element] = {
        0x00080052: (0x00080052, "CS", lambda _: level.value),
        0x00080054: (0x00080054, "AE", lambda _: settings.ae_title),
        0x00080056: (0x00080056, "CS", lambda _: "ONLINE"),
    }
    for element in elements:
        vr = element.VR.split(" or ")[0]
        keyword = element.keyword
        if not keyword:
            planned[int(element.tag)] = (int(element.tag), vr, lambda _: None)
        elif vr == "SQ":
            planned[int(element.tag)] = (int(element.tag), vr, _sequence_getter(keyword))
        else:
            planned[int(element.tag)] = (int(element.tag), vr, _getter(keyword))
    for keyword in unique_keys:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        planned.setdefault(tag, (tag, dictionary_VR(keyword), _getter(keyword)))
    ordered = [planned[tag] for tag in sorted(planned)]

    if not syntax.is_little_endian or syntax.is_deflated:
        return lambda values: _with_pydicom(ordered, values, syntax)
    implicit = syntax.is_implicit_VR

    def encode_match(values: dict[str, Any]) -> bytes:
        texts = [(tag, vr, getter(values)) for tag, vr, getter in ordered]
        encoded = {
            tag: _sequence_element(tag, items, implicit)
            for tag, vr, items in texts
            if vr == "SQ" and items
        }
        non_ascii = any(isinstance(v, str) and not v.isascii() for _, _, v in texts) or any(
            not sequence.isascii() for sequence in encoded.values()
        )
        parts = []
        if non_ascii:
            # PS3.4 C.4.1.1.3.1: the response says how its text is encoded.
            parts.append(_element(_SPECIFIC_CHARACTER_SET, "CS", b"ISO_IR 192", implicit))
        for tag, vr, value in texts:
            if tag in encoded:
                parts.append(encoded[tag])
            else:
                parts.append(_element(tag, vr, _value_bytes(vr, value), implicit))
        return b"".join(parts)

    return encode_match


def _requested_sequences(elements: tuple[Any, ...]) -> dict[str, frozenset[str] | None]:
    """Sequence keyword -> the keywords its request item asks for (``None``:
    an empty sequence or item, every attribute of every item).

    Values inside the item would be sequence matching (PS3.4 C.2.2.2.6),
    which is not supported: like Orthanc, the constraint is ignored and the
    sequence returned as stored, with a warning in the log.
    """
    sequences: dict[str, frozenset[str] | None] = {}
    for element in elements:
        if element.VR != "SQ" or not element.keyword:
            continue
        item = element.value[0] if element.value else None
        keywords = frozenset(e.keyword for e in item if e.keyword) if item is not None else None
        if item is not None and any(e.VR != "SQ" and e.value not in (None, "") for e in item):
            log.warning(
                "C-FIND: matching inside %s is not supported; the sequence is returned as stored",
                element.keyword,
            )
        sequences[element.keyword] = keywords or None
    return sequences


def _sequence_items(
    found: dict[str, list[dict[str, Any]]], wanted: dict[str, frozenset[str] | None]
) -> dict[str, list[Dataset]]:
    """The stored items (DICOM JSON) as data sets, with only the attributes asked for."""
    items = {}
    for keyword, keywords in wanted.items():
        datasets = []
        for item in found.get(keyword, []):
            dataset = Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")
            if keywords is not None:
                for element in list(dataset):
                    if element.keyword not in keywords:
                        del dataset[element.tag]
            datasets.append(dataset)
        items[keyword] = datasets
    return items


def _sequence_getter(keyword: str) -> Callable[[dict[str, Any]], Any]:
    def get(values: dict[str, Any]) -> Any:
        return values.get(keyword) or None

    return get


def _sequence_element(tag: int, items: list[Dataset], implicit: bool) -> bytes:
    """One sequence element, its items' text in UTF-8 (the response then says ISO_IR 192)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_data_element(buffer, DataElement(tag, "SQ", Sequence(items)), _UTF8)
    return buffer.getvalue()


def _getter(keyword: str) -> Callable[[dict[str, Any]], Any]:
    def get(values: dict[str, Any]) -> Any:
        value = values.get(keyword)
        if isinstance(value, list):
            return "\\".join(str(v) for v in value)
        return value

    return get


def _value_bytes(vr: str, value: Any) -> bytes:
    if value is None or value == "":
        return b""
    if vr in _BINARY_NUMBERS:
        number = float(value) if vr in ("FL", "FD") else int(value)
        return struct.pack(_BINARY_NUMBERS[vr], number)
    data = str(value).encode("utf-8")
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return data


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def _with_pydicom(ordered: list[Element], values: dict[str, Any], syntax: UID) -> bytes:
    """Big endian or deflated identifiers: rare enough for pydicom's encoder."""
    dataset = Dataset()
    non_ascii = False
    for tag, vr, getter in ordered:
        value = getter(values)
        if vr == "SQ":
            dataset.add_new(tag, vr, Sequence(value or []))
            non_ascii = non_ascii or not _sequence_element(tag, value or [], False).isascii()
        else:
            dataset.add_new(tag, vr, value)
    if non_ascii or any(isinstance(e.value, str) and not e.value.isascii() for e in dataset):
        dataset.SpecificCharacterSet = "ISO_IR 192"
    data = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    return bytes(data or b"")


class _Responder:
    """Sends the responses of one C-FIND (PS3.4 C.4.1.3, PS3.7 9.3.2.2).

    Pending responses are encoded as whole PDUs and handed to the DUL thread
    a batch at a time (``flush``), where it allows (``send_encoded_pdus``):
    one trip through pynetdicom's DUL and one socket write per batch instead
    of per match. The final status flushes what is left before it.
    """

    def __init__(self, assoc: Association, request: C_FIND, context: PresentationContext) -> None:
        self.assoc = assoc
        self.request = request
        assert context.context_id is not None
        self.context_id = context.context_id
        self._pending_command: list[bytes] | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._batching = isinstance(assoc.dul, BatchingDUL)

    def pending(self, identifier: bytes) -> None:
        if self._pending_command is None:
            # Every pending response has the same command set: encode it once.
            self._pending_command = [
                pdv
                for pdata in _message(self.request, PENDING, b"\x00").encode_msg(
                    self.context_id, self.assoc.dimse.maximum_pdu_size
                )
                for _, pdv in pdata.presentation_data_value_list
                if pdv[0] & 0x01  # command fragments only
            ]
        limit = self.assoc.dimse.maximum_pdu_size
        step = len(identifier) if not limit else max(1, limit - 6)
        pdvs = list(self._pending_command)
        for start in range(0, max(len(identifier), 1), step):
            last = start + step >= len(identifier)
            pdvs.append((b"\x02" if last else b"\x00") + identifier[start : start + step])
        # A small response travels as one P-DATA-TF holding both PDVs (PS3.8
        # 9.3.5 allows several): half the PDUs to encode and send.
        together = not limit or sum(len(pdv) + 6 for pdv in pdvs) <= limit
        groups = [pdvs] if together else [[pdv] for pdv in pdvs]
        if not self._batching:
            for group in groups:
                self._send(*group)
            return
        for group in groups:
            pdu = p_data_tf(self.context_id, group)
            self._batch.append(pdu)
            self._batch_bytes += len(pdu)
        if self._batch_bytes >= _BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._batch:
            send_encoded_pdus(self.assoc, b"".join(self._batch))
            self._batch, self._batch_bytes = [], 0

    def status(self, code: int, comment: str = "") -> None:
        self.flush()
        response = C_FIND()
        response.MessageIDBeingRespondedTo = self.request.MessageID
        response.AffectedSOPClassUID = self.request.AffectedSOPClassUID
        response.Status = code
        if comment:
            response.ErrorComment = comment.replace("\\", "/")[:ERROR_COMMENT_LENGTH]  # type: ignore[assignment]
        self.assoc.dimse.send_msg(response, self.context_id)

    def _send(self, *pdvs: bytes) -> None:
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend((self.context_id, pdv) for pdv in pdvs)
        self.assoc.dul.send_pdu(pdata)


def _message(request: C_FIND, status: int, identifier: bytes) -> C_FIND_RSP:
    response = C_FIND()
    response.MessageIDBeingRespondedTo = request.MessageID
    response.AffectedSOPClassUID = request.AffectedSOPClassUID
    response.Status = status
    response.Identifier = BytesIO(identifier)
    message = C_FIND_RSP()
    message.primitive_to_message(response)
    return message
