"""Latency tuning of pynetdicom's acceptor, through its request-handler hook.

pynetdicom runs two polling threads per association: the DUL reactor sleeps
1 ms whenever it finds nothing to do, and the association reactor sleeps 1 ms
between looks for a complete DIMSE message. A modality waits for each C-STORE
response before it sends the next image, so those sleeps add 1-2 ms to every
instance, and an idle association costs CPU (4 idle ones took 15% of a core).
pynetdicom also reads PDUs 4 KiB at a time into a growing bytearray and leaves
Nagle's algorithm on, so each small response waits for the peer's delayed ACK.

Here the same objects wait on events instead: the DUL blocks in ``select`` on
the socket *and* a wake-up socket that is signalled whenever a primitive is
queued for sending; the association reactor blocks on its message queue.
Neither the state machine nor the protocol code of pynetdicom is replaced.
Measured on one association (benchmarks/README.md): the time between two
C-STORE requests outside our handler fell from ~3.9 ms to ~2.9 ms.
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, evt
from pynetdicom import _config as _pynetdicom_config
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_items import PresentationDataValueItem
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from pynetdicom.association import Association

# Largest buffer a read allocates before data arrives to fill it: 16 MiB,
# far above the 1 MiB PDUs we accept.
_LARGEST_BUFFER = 1 << 24
# Longest a reactor waits before it re-checks its timers and kill flags.
_MAX_WAIT = 0.05
# Linux only: ACK at once instead of up to 40 ms later. A sender with Nagle's
# algorithm on holds its next small segment until our ACK arrives.
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class _SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``on_put`` after each put, to wake whoever waits elsewhere.

    Used for the DUL's outgoing queue (wakes the DUL thread from ``select``)
    and for its queue to the association (A-RELEASE, A-ABORT...: wakes the
    association reactor, which would otherwise notice only after its wait for
    a DIMSE message timed out).
    """

    def __init__(self, on_put: Callable[[], None]) -> None:
        super().__init__()
        self._on_put = on_put

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._on_put()


class EventDrivenAssociationSocket(AssociationSocket):
    """pynetdicom's socket with a blocking ``ready`` and a single-copy ``recv``."""

    _wake_reader: socket.socket
    _wake_writer: socket.socket
    _outgoing: queue.Queue[Any] | None
    _polling: bool
    _poller: tuple[int, Any] | None

    def attach_wakeup(self, outgoing: queue.Queue[Any] | None = None) -> None:
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._outgoing = outgoing
        self._polling = False
        self._poller = None
        self._send_lock = threading.Lock()

    def send(self, bytestream: bytes) -> None:
        # Two threads may send: the DUL, and an association thread writing a
        # C-STORE response itself (``BatchingDUL.send_now``). A PDU leaves whole.
        with self._send_lock:
            super().send(bytestream)

    def wake(self) -> None:
        # Only a DUL thread that waits in poll needs a wake-up byte: one that is
        # busy finds the primitive on its next look at the queue. A C-FIND sends
        # one PDU per match, and the byte was a system call for each (~15% of
        # the server's CPU on a week of studies). ``ready`` sets ``_polling``
        # before it looks at the queue, so a put is either seen there or woken.
        if not self._polling:
            return
        try:  # noqa: SIM105 - hot path; contextlib.suppress costs a frame per put
            self._wake_writer.send(b"\0")
        except OSError:
            pass  # buffer full (a wake-up is already pending) or closed

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            time.sleep(0.001)  # nothing to wait on; don't spin
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        self._polling = True
        try:
            if self._outgoing is not None and self._outgoing.qsize():
                return False  # something to send first; the DUL loop takes it
            events = dict(self._poll_object(sock).poll(_MAX_WAIT * 1000))
        except (OSError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed
            return False
        finally:
            self._polling = False
        if self._wake_reader.fileno() in events:
            try:
                while self._wake_reader.recv(4096):
                    pass
            except OSError:
                pass  # drained
        # POLLHUP/POLLERR count as readable: the read then sees the closed peer.
        return sock.fileno() in events

    def _poll_object(self, sock: socket.socket | ssl.SSLSocket) -> Any:
        """The association's socket and wake-up socket, registered once.

        poll, not select: select fails on descriptors above 1023, which a busy
        server holding many files and sockets reaches.
        """
        fd = sock.fileno()
        if self._poller is None or self._poller[0] != fd:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.register(self._wake_reader, select.POLLIN)
            self._poller = (fd, poller)
        return self._poller[1]

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the socket, or fewer when the peer closed first
        (pynetdicom then treats the PDU as broken).

        The buffer grows with what arrives, not with what a PDU's length field
        claims: garbage on the port may claim 4 GB, which would be allocated
        and zeroed at once (half a gigabyte within 0.3 s, in a test)."""
        if nr_bytes <= _LARGEST_BUFFER:
            return self._recv_up_to(nr_bytes)
        buffer = bytearray()
        while len(buffer) < nr_bytes:
            wanted = min(_LARGEST_BUFFER, nr_bytes - len(buffer))
            part = self._recv_up_to(wanted)
            buffer += part
            if len(part) < wanted:
                break
        return buffer

    def _recv_up_to(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        if _TCP_QUICKACK is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:
                return buffer[:received]
            received += count
        return buffer

    def close(self) -> None:
        super().close()
        self._wake_reader.close()
        self._wake_writer.close()


_NUDGE = (None, None)
"""Put on the DIMSE message queue to wake the association reactor early."""


class GuardedDIMSEServiceProvider(DIMSEServiceProvider):
    """Keeps the association reactor off the responses a ``send_*`` call waits for.

    pynetdicom's ``send_c_find``, ``send_c_store``... pause the reactor by
    clearing ``_reactor_checkpoint`` and waiting for ``_is_paused``, and set
    the checkpoint again when done. That flag goes stale: the reactor, woken
    by one call's ``set()``, has not yet run when the next call clears the
    checkpoint, so the next call sees ``_is_paused`` still true and sends its
    request while the reactor is about to look at the message queue. When a
    response arrives in that moment the reactor takes it, logs "Received
    unexpected C-FIND service message" and drops it: a C-FIND then ends in
    Success short of a match, a C-STORE waits out the DIMSE timeout and the
    association is aborted (pynetdicom issue #875; with CPU contention in the
    client, about one C-FIND in a hundred, reproduced in
    tests/e2e/test_query_retrieve.py).

    The reactor is the only caller of the non-blocking ``get_msg``. Here it
    hands back whatever it takes while the checkpoint is clear: a message that
    reached the queue before the ``clear()`` cannot be the answer to a request
    sent after it, and anything later belongs to the caller that cleared it.
    """

    def get_msg(self, block: bool = False) -> Any:
        item = self._take(block)
        if block or item[1] is None or self.assoc._reactor_checkpoint.is_set():
            return item
        queue_ = self.msg_queue
        with queue_.mutex:  # back to the front, in order, for the waiting caller
            queue_.queue.appendleft(item)
            queue_.unfinished_tasks += 1
            queue_.not_empty.notify()
        return None, None

    def _take(self, block: bool) -> Any:
        return super().get_msg(block)


def guard_reactor(assoc: Association) -> Association:
    """Protect an association made by a plain pynetdicom ``AE`` (see above).

    Call it before the first ``send_*``: test and benchmark clients, or any
    SCU that is not a ``TunedAE``. Returns the association.
    """
    if not isinstance(assoc.dimse, GuardedDIMSEServiceProvider):
        assoc.dimse.__class__ = GuardedDIMSEServiceProvider
    return assoc


class _NudgingCheckpoint(threading.Event):
    """The reactor's pause point; clearing it wakes a reactor waiting on its queue.

    ``send_*`` then waits for the pause (when ``_is_paused`` is not stale)
    about a millisecond, not the reactor's whole ``_MAX_WAIT``.
    """

    def __init__(self, dimse: PromptDIMSEServiceProvider, was_set: bool) -> None:
        super().__init__()
        self._dimse = dimse
        if was_set:
            self.set()

    def clear(self) -> None:
        super().clear()
        self._dimse.nudge()


class PromptDIMSEServiceProvider(GuardedDIMSEServiceProvider):
    """Lets the association reactor block on its message queue instead of polling."""

    def nudge(self) -> None:
        self.msg_queue.put(_NUDGE)

    def _take(self, block: bool) -> Any:
        deadline = None if self.dimse_timeout is None else time.monotonic() + self.dimse_timeout
        while True:
            if block:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            else:
                wait = _MAX_WAIT
            try:
                item = self.msg_queue.get(timeout=wait)
            except queue.Empty:
                return None, None
            # A nudge ends a non-blocking wait (the reactor then checks for
            # release/abort); a blocking wait is for a real message only.
            if item is not _NUDGE or not block:
                return item

    def receive_primitive(self, primitive: P_DATA) -> None:
        # pynetdicom makes a plain DIMSEMessage only when none is under way.
        if self.message is None:
            self.message = _IncomingMessage.new()
        super().receive_primitive(primitive)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        """pynetdicom's, but a C-STORE response is written straight to bytes.

        pynetdicom builds a pydicom data set for every response, encodes it
        twice (once for the group length) and hands the DUL a primitive to
        encode again: about a fifth of the CPU of a C-STORE on four
        associations, for a hundred bytes. The bytes are the same
        (``c_store_rsp_command``); a response it does not write, or an
        association with handlers watching sent messages, takes the usual way.
        They leave from this thread when nothing is queued before them
        (``BatchingDUL.send_now``).
        """
        if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
            command = c_store_rsp_command(primitive)
            limit = self.maximum_pdu_size
            if (
                command is not None
                and (not limit or len(command) + 6 <= limit)
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
            ):
                pdu = p_data_tf(context_id, [b"\x03" + command])
                dul = self.assoc.dul
                if isinstance(dul, BatchingDUL) and dul.send_now(pdu):
                    return
                if send_encoded_pdus(self.assoc, pdu):
                    return
        super().send_msg(primitive, context_id)


class _IncomingMessage(DIMSEMessage):
    """pynetdicom's incoming DIMSE message, but a C-STORE request's command
    is read from its bytes.

    pynetdicom decodes every command set into a pydicom data set and then
    walks it to fill the primitive: ~0.35 ms of a C-STORE's CPU for about
    150 bytes. The usual request (its whole command in the first fragment,
    the elements of PS3.7 9.3.1.1 without a Move Originator) is read by
    ``c_store_rq_fields`` into the same primitive, through the same
    setters; anything else, or an association whose handlers watch received
    messages, is decoded by pynetdicom.
    """

    @classmethod
    def new(cls) -> _IncomingMessage:
        # DIMSEMessage.__init__ sets up its subclasses by their class name.
        message = DIMSEMessage()
        message.__class__ = cls
        return cast(_IncomingMessage, message)

    def decode_msg(self, primitive: P_DATA, assoc: Association | None = None) -> bool:
        items = primitive.presentation_data_value_list if type(primitive) is P_DATA else None
        if (
            not items
            or _pynetdicom_config.STORE_RECV_CHUNKED_DATASET
            or self.encoded_command_set.tell()
            or items[0][1][0] & 3 != 3  # not a whole command in one fragment
            or (assoc is not None and assoc.get_handlers(evt.EVT_DIMSE_RECV))
        ):
            return super().decode_msg(primitive, assoc)
        context_id, data = items[0]
        fields = c_store_rq_fields(data[1:])
        if fields is None:
            return super().decode_msg(primitive, assoc)
        self.context_id = context_id
        self.__class__ = _IncomingCStoreRequest  # type: ignore[assignment]
        self.request_fields = fields
        if len(items) == 1:
            return False
        rest = P_DATA()  # the data set fragments after it, read by pynetdicom
        rest.presentation_data_value_list.extend(items[1:])  # views: not for the setter
        return DIMSEMessage.decode_msg(self, rest, assoc)


class _IncomingCStoreRequest(C_STORE_RQ):
    """A C-STORE request whose command ``_IncomingMessage`` has read."""

    request_fields: tuple[int, int, str, str]

    def message_to_primitive(self) -> C_STORE:
        message_id, priority, sop_class_uid, sop_instance_uid = self.request_fields
        primitive = C_STORE()
        primitive.MessageID = message_id
        primitive.Priority = priority
        primitive.AffectedSOPClassUID = sop_class_uid
        primitive.AffectedSOPInstanceUID = sop_instance_uid
        primitive.DataSet = self.data_set
        primitive._context_id = self.context_id
        return primitive


# The elements of a C-STORE request read by ``c_store_rq_fields`` (PS3.7
# 9.3.1.1): tag to the length its value must have (0 for a UID's any).
_C_STORE_RQ_ELEMENTS = {
    0x00000000: 4,  # Command Group Length
    0x00000002: 0,  # Affected SOP Class UID
    0x00000100: 2,  # Command Field
    0x00000110: 2,  # Message ID
    0x00000700: 2,  # Priority
    0x00000800: 2,  # Command Data Set Type
    0x00001000: 0,  # Affected SOP Instance UID
}
_C_STORE_RQ = 0x0001
_NO_DATA_SET = 0x0101
_COMMAND_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")


def c_store_rq_fields(command: bytes | memoryview) -> tuple[int, int, str, str] | None:
    """Message ID, Priority and the Affected SOP Class and Instance UIDs of a
    C-STORE request's command set (Implicit VR Little Endian, PS3.7 6.3.1),
    valued as pydicom decodes them; ``None`` for anything pynetdicom should
    decode: another command, an element not listed above (a Move Originator),
    one missing or twice, a value of another length, no data set, a
    multi-valued or malformed UID (pynetdicom's setters judge a UID that
    looks well formed)."""
    view = memoryview(command)
    end, position = len(view), 0
    values: dict[int, bytes] = {}
    while position < end:
        if end - position < 8:
            return None
        group, element, length = _COMMAND_ELEMENT.unpack_from(view, position)
        tag = group << 16 | element
        position += 8
        expected = _C_STORE_RQ_ELEMENTS.get(tag)
        if (
            expected is None
            or tag in values
            or (expected and length != expected)
            or position + length > end
        ):
            return None
        values[tag] = view[position : position + length].tobytes()
        position += length
    if len(values) != len(_C_STORE_RQ_ELEMENTS):
        return None
    if (
        _US.unpack(values[0x00000100])[0] != _C_STORE_RQ
        or _US.unpack(values[0x00000800])[0] == _NO_DATA_SET
    ):
        return None
    sop_class_uid = values[0x00000002].decode("latin-1").rstrip("\0 ")
    sop_instance_uid = values[0x00001000].decode("latin-1").rstrip("\0 ")
    if not (_plain_uid(sop_class_uid) and _plain_uid(sop_instance_uid)):
        return None
    return (
        _US.unpack(values[0x00000110])[0],
        _US.unpack(values[0x00000700])[0],
        sop_class_uid,
        sop_instance_uid,
    )


def _plain_uid(text: str) -> bool:
    return 0 < len(text) <= 64 and text.isascii() and _UID_CHARACTERS.issuperset(text)


_UID_CHARACTERS = frozenset("0123456789.")


def c_store_rsp_command(primitive: C_STORE) -> bytes | None:
    """The command set of a C-STORE response (PS3.7 9.3.1.2) in Implicit VR
    Little Endian, as pynetdicom encodes it: the elements it holds in tag
    order, UIDs padded with NUL and text with a space to an even length. ``None``
    for what is left to pynetdicom: an Offending Element, a comment that is not
    plain ASCII."""
    if primitive.OffendingElement is not None or primitive.Status is None:
        return None
    comment = primitive.ErrorComment
    if comment is not None and (not isinstance(comment, str) or not comment.isascii()):
        return None
    elements = []

    def element(number: int, value: bytes) -> None:
        elements.append(struct.pack("<HHL", 0x0000, number, len(value)) + value)

    def padded(text: str, pad: bytes) -> bytes:
        raw = text.encode("ascii")
        return raw + pad if len(raw) % 2 else raw

    if primitive.AffectedSOPClassUID is not None:
        element(0x0002, padded(str(primitive.AffectedSOPClassUID), b"\0"))
    element(0x0100, struct.pack("<H", 0x8001))  # Command Field: C-STORE-RSP
    element(0x0120, struct.pack("<H", primitive.MessageIDBeingRespondedTo))
    element(0x0800, struct.pack("<H", 0x0101))  # Command Data Set Type: none
    element(0x0900, struct.pack("<H", primitive.Status))
    if comment is not None:
        element(0x0902, padded(comment, b" "))
    if primitive.AffectedSOPInstanceUID is not None:
        element(0x1000, padded(str(primitive.AffectedSOPInstanceUID), b"\0"))
    body = b"".join(elements)
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


class EncodedPDUs(bytes):
    """Whole P-DATA-TF PDUs, encoded already, that go through the DUL's queue
    as one primitive and leave in one socket write (see ``BatchingDUL``)."""


class BatchingDUL(DULServiceProvider):
    """pynetdicom's DUL, which also sends ``EncodedPDUs`` as they are.

    Each primitive costs the DUL thread a trip through its state machine and
    a system call, and the two threads trade the GIL for it: for a C-FIND
    answered with one PDU per match, more than the match itself. The C-FIND
    handler writes its pending responses as PDUs and hands over a batch at a
    time; the peer receives the same PDUs, in the same order, as ever.
    """

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's, but a P-DATA-TF's values are views of the bytes read.

        pynetdicom copies a P-DATA-TF four times before the DIMSE layer gets
        its fragments (the whole PDU, its items, each value, the value past
        its header byte): 2 MB of copying for a 512 kB CT slice. Here each
        value is a ``memoryview`` of the PDU as read, which the DIMSE message
        copies once into the data set it assembles. Only when nothing watches
        received data or PDUs (pynetdicom's logging handlers, bound when
        debugging, look at the PDU objects); a PDU whose item lengths do not
        add up goes to pynetdicom, which says why.
        """
        if bytestream[:1] == b"\x04" and not (
            self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        ):
            items = _viewed_pdv_items(bytestream)
            if items is not None:
                pdu = P_DATA_TF()
                pdu.presentation_data_value_items = items
                return pdu, "Evt10"  # PS3.8 9.2: P-DATA-TF PDU received
        return cast(tuple[Any, str], super()._decode_pdu(bytestream))

    # Set by ``make_event_driven`` (the class is swapped onto pynetdicom's object).
    _pdata_lock: threading.Lock
    _pdata_queued: int
    """P-DATA primitives put on the queue and not yet sent."""

    def send_pdu(self, primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            with self._pdata_lock:
                self._pdata_queued += 1
        super().send_pdu(primitive)

    def send_now(self, pdus: bytes) -> bool:
        """Send whole P-DATA-TF PDUs from the calling thread, if nothing they
        must follow is queued and the association is transferring data (Sta6,
        where the state machine would only send them: PS3.8 9.2, DT-1).
        ``False`` when they must go through the queue.

        A C-STORE response queued for the DUL thread waited ~0.2 ms for that
        thread to wake and take the GIL, on every instance of an association.
        """
        sock = self.socket
        if sock is None:
            return False
        with self._pdata_lock:
            if self._pdata_queued != 0 or self.state_machine.current_state != "Sta6":
                return False
            sock.send(pdus)
        return True

    def _send(self, pdu: Any) -> None:
        try:
            items = getattr(pdu, "presentation_data_value_items", None)
            if items and len(items) == 1:
                value = items[0].presentation_data_value
                if isinstance(value, EncodedPDUs):
                    if self.socket is not None:
                        self.socket.send(value)
                    return
            super()._send(pdu)
        finally:
            if isinstance(pdu, P_DATA_TF):
                with self._pdata_lock:
                    self._pdata_queued -= 1


def _viewed_pdv_items(pdu: bytearray) -> list[PresentationDataValueItem] | None:
    """The presentation data value items of a P-DATA-TF PDU (PS3.8 9.3.5.1),
    each value a view of ``pdu``; ``None`` when the lengths do not add up."""
    view = memoryview(pdu)
    end = len(pdu)
    if end < 6 or 6 + int.from_bytes(view[2:6], "big") != end:
        return None
    items = []
    offset = 6
    while offset < end:
        if offset + 6 > end:
            return None
        length = int.from_bytes(view[offset : offset + 4], "big")
        if length < 2 or offset + 4 + length > end:
            return None  # a value holds at least its message control header
        item = PresentationDataValueItem()
        item.presentation_context_id = view[offset + 4]
        item.presentation_data_value = view[offset + 5 : offset + 4 + length]  # type: ignore[assignment]
        items.append(item)
        offset += 4 + length
    return items


def send_encoded_pdus(assoc: Association, data: bytes) -> bool:
    """Queue ``data`` (whole P-DATA-TF PDUs) behind what the association has
    queued already; ``False`` when its DUL is not a ``BatchingDUL``."""
    if not isinstance(assoc.dul, BatchingDUL):
        return False
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((0, EncodedPDUs(data)))
    assoc.dul.send_pdu(primitive)
    return True


def p_data_tf(context_id: int, pdvs: Sequence[bytes]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5) holding ``pdvs``, each a message control
    header and its fragment."""
    items = [struct.pack(">LB", len(pdv) + 1, context_id) + pdv for pdv in pdvs]
    body = b"".join(items)
    return struct.pack(">BBL", 0x04, 0x00, len(body)) + body


class CheaplyCopiedPresentationContext(PresentationContext):
    """A supported context that deep-copies in microseconds.

    pynetdicom deep-copies the acceptor's whole list of supported contexts for
    every association. With every storage SOP class in every transfer syntax
    (170 x 39) ``copy.deepcopy`` took ~150 ms, so each association, even a
    C-ECHO, waited that long; modalities that open one association per image
    would be capped near 6 images/s. The only mutable member is the transfer
    syntax list; UIDs are immutable strings and are shared.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> CheaplyCopiedPresentationContext:
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def cheaply_copied(contexts: list[PresentationContext]) -> list[PresentationContext]:
    for context in contexts:
        context.__class__ = CheaplyCopiedPresentationContext
    return contexts


def make_event_driven(assoc: Association, sock: AssociationSocket) -> None:
    """Switch a new, not yet started association to waiting on events.

    Same objects and state; only how they wait differs (see module docstring).
    """
    sock.__class__ = EventDrivenAssociationSocket
    assert isinstance(sock, EventDrivenAssociationSocket)
    assoc.dul.__class__ = BatchingDUL
    assert isinstance(assoc.dul, BatchingDUL)
    assoc.dul._pdata_lock = threading.Lock()
    assoc.dul._pdata_queued = 0
    outgoing = _SignallingQueue(sock.wake)
    sock.attach_wakeup(outgoing)
    assoc.dul.to_provider_queue = outgoing
    assoc.dul._run_loop_delay = 0  # ready() now blocks until there is work
    dimse = assoc.dimse
    dimse.__class__ = PromptDIMSEServiceProvider
    assert isinstance(dimse, PromptDIMSEServiceProvider)
    assoc.dul.to_user_queue = _SignallingQueue(dimse.nudge)
    assoc._reactor_checkpoint = _NudgingCheckpoint(dimse, assoc._reactor_checkpoint.is_set())


def _no_delay(sock: socket.socket | ssl.SSLSocket | None) -> None:
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TunedRequestHandler(RequestHandler):
    """Accepted associations: event-driven, without Nagle's algorithm."""

    def _create_association(self) -> Association:
        _no_delay(self.request)
        assoc = super()._create_association()
        assert assoc.dul.socket is not None
        make_event_driven(assoc, assoc.dul.socket)
        return assoc


class TunedAE(AE):
    """Associations we request (C-MOVE sub-operations) get the same tuning."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        _no_delay(sock.socket)
        make_event_driven(assoc, sock)
        return sock


@contextmanager
def paused_reactor(assoc: Association) -> Iterator[None]:
    """Hold the association's reactor while we exchange messages ourselves,
    as ``Association.send_c_store`` does, so it does not take our responses.

    Inside an SCP handler the reactor is already paused (it is running us).
    """
    assoc._reactor_checkpoint.clear()  # a tuned association's checkpoint also wakes it
    try:
        while not assoc._is_paused and assoc.is_alive():
            time.sleep(0.0001)
        yield
    finally:
        assoc._reactor_checkpoint.set()


def next_message(assoc: Association) -> Any:
    """The next DIMSE message for an association whose reactor we hold, or
    ``None`` after the DIMSE timeout or as soon as the connection is gone.

    ``get_msg(block=True)`` alone would wait out the whole timeout when the
    peer aborts: the abort goes to the (paused) reactor, not to this queue.
    """
    timeout = assoc.dimse.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            item = assoc.dimse.msg_queue.get(timeout=0.2)
        except queue.Empty:
            closed = assoc.dul.state_machine.current_state == "Sta1" or not assoc.dul.is_alive()
            if closed or (deadline is not None and time.monotonic() > deadline):
                return None
            continue
        if item is _NUDGE:
            continue
        return item[1]
