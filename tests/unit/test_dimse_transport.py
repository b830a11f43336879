"""What pacs reads and writes around pynetdicom's codecs is what they give:
the C-STORE response bytes, the values of a P-DATA-TF PDU."""

from __future__ import annotations

import itertools
import socket
import struct
from io import BytesIO
from typing import Any

import pytest
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from pacs.dimse.transport import (
    BatchingDUL,
    TunedAE,
    _IncomingCStoreRequest,
    _IncomingMessage,
    _viewed_pdv_items,
    c_store_rq_fields,
    c_store_rsp_command,
    make_event_driven,
    p_data_tf,
)


def _response(
    sop_class: str | None, sop_instance: str | None, status: int, comment: str | None, mid: int
) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = mid
    primitive.Status = status
    if sop_class is not None:
        primitive.AffectedSOPClassUID = sop_class
    if sop_instance is not None:
        primitive.AffectedSOPInstanceUID = sop_instance
    primitive.ErrorComment = comment
    return primitive


def _pynetdicom_bytes(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "status", "comment", "mid"),
    list(
        itertools.product(
            ["1.2.840.10008.5.1.4.1.1.2", "1.2.3", None],  # even, odd length, absent
            ["1.2.826.0.1.3680043.8.498.1", "1.2.34", None],
            [0x0000, 0xB000, 0xA700, 0xA900, 0xC000, 0xFFFF],
            [None, "", "x", "out of resources: disk full"],
            [1, 0xFFFF],
        )
    ),
)
def test_same_bytes_as_pynetdicom(
    sop_class: str | None, sop_instance: str | None, status: int, comment: str | None, mid: int
) -> None:
    primitive = _response(sop_class, sop_instance, status, comment, mid)
    assert c_store_rsp_command(primitive) == _pynetdicom_bytes(primitive)


def test_what_it_does_not_write_is_left_to_pynetdicom() -> None:
    offending = _response("1.2.3", "1.2.3.4", 0xC000, None, 1)
    offending.OffendingElement = [Tag(0x0010, 0x0010)]
    assert c_store_rsp_command(offending) is None
    accented = _response("1.2.3", "1.2.3.4", 0xC000, "données illisibles", 1)
    assert c_store_rsp_command(accented) is None


def _p_data_tf(values: list[tuple[int, bytes]]) -> bytearray:
    primitive = P_DATA()
    primitive.presentation_data_value_list = [[context, value] for context, value in values]
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytearray(pdu.encode())


def test_p_data_tf_items_are_viewed_as_pynetdicom_decodes_them() -> None:
    values = [(1, b"\x03" + b"command" * 9), (3, b"\x00" + bytes(range(256)) * 700), (5, b"\x02")]
    encoded = _p_data_tf(values)
    reference = P_DATA_TF()
    reference.decode(bytes(encoded))
    items = _viewed_pdv_items(encoded)
    assert items is not None
    assert [(i.presentation_context_id, bytes(i.presentation_data_value)) for i in items] == [
        (i.presentation_context_id, i.presentation_data_value)
        for i in reference.presentation_data_value_items
    ]
    assert all(isinstance(item.presentation_data_value, memoryview) for item in items)


@pytest.mark.parametrize(
    "damage",
    [
        lambda pdu: pdu[:-1],  # shorter than its PDU length says
        lambda pdu: pdu[:6] + b"\x00\x00\x00\x01" + pdu[10:],  # an item with no control header
        lambda pdu: pdu[:6] + b"\x00\x10\x00\x00" + pdu[10:],  # an item past the PDU's end
    ],
)
def test_p_data_tf_whose_lengths_do_not_add_up_is_left_to_pynetdicom(damage: Any) -> None:
    assert _viewed_pdv_items(bytearray(damage(_p_data_tf([(1, b"\x03abcd")])))) is None


def _tuned_association_on(sock: socket.socket) -> Association:
    """An acceptor's association on ``sock``, tuned as the server's are; its
    reactors are not started, so what is queued stays queued."""
    assoc = Association(TunedAE(), mode="acceptor")
    transport = AssociationSocket(assoc, client_socket=sock, address=("127.0.0.1", 0))
    assoc.set_socket(transport)
    make_event_driven(assoc, transport)
    return assoc


def test_a_response_is_sent_at_once_only_with_nothing_queued_before_it() -> None:
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    assoc = _tuned_association_on(ours)
    try:
        dul = assoc.dul
        assert isinstance(dul, BatchingDUL)
        pdu = p_data_tf(1, [b"\x03" + b"response"])
        # Before the association is established the state machine decides.
        assert not dul.send_now(pdu)
        dul.state_machine.current_state = "Sta6"
        assert dul.send_now(pdu)
        assert peer.recv(100) == pdu
        # A P-DATA the DUL thread has not sent yet goes first: the response
        # must then wait its turn in the queue.
        queued = P_DATA()
        queued.presentation_data_value_list.append((1, b"\x02" + b"earlier"))
        dul.send_pdu(queued)
        assert not dul.send_now(pdu)
        # Once the DUL has sent it (as the state machine's DT-1 does), the way is free.
        taken = dul.to_provider_queue.get_nowait()
        sent = P_DATA_TF()
        sent.from_primitive(taken)
        dul._send(sent)
        assert peer.recv(100) == sent.encode()
        assert dul.send_now(pdu)
        assert peer.recv(100) == pdu
    finally:
        assert assoc.dul.socket is not None
        assoc.dul.socket.close()  # and its wake-up sockets
        peer.close()


# -- C-STORE requests read from their command bytes ------------------------------------------


def _request(
    mid: int, priority: int, sop_class: str, sop_instance: str, originator: str | None
) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = mid
    primitive.Priority = priority
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    if originator is not None:
        primitive.MoveOriginatorApplicationEntityTitle = originator
        primitive.MoveOriginatorMessageID = 3
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00\x04\x00\x00\x001.23" * 40)
    return primitive


def _p_datas(primitive: C_STORE, max_pdu: int) -> list[P_DATA]:
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return list(message.encode_msg(5, max_pdu))


def _received(p_datas: list[P_DATA], message: DIMSEMessage) -> tuple[type, C_STORE]:
    for n, p_data in enumerate(p_datas):
        if message.decode_msg(p_data, None):
            assert n == len(p_datas) - 1
            return type(message), message.message_to_primitive()
    raise AssertionError("message never complete")


def _fields(primitive: C_STORE) -> dict[str, Any]:
    names = (
        "MessageID",
        "Priority",
        "AffectedSOPClassUID",
        "AffectedSOPInstanceUID",
        "MoveOriginatorApplicationEntityTitle",
        "MoveOriginatorMessageID",
        "_context_id",
        "_dataset_path",
        "_dataset_file",
    )
    fields = {name: getattr(primitive, name) for name in names}
    fields["types"] = [type(value) for value in fields.values()]
    fields["DataSet"] = primitive.DataSet.getvalue() if primitive.DataSet is not None else None
    return fields


@pytest.mark.parametrize(
    ("mid", "priority", "sop_class", "sop_instance", "originator", "max_pdu"),
    list(
        itertools.product(
            (1, 65535),
            (0, 1, 2),
            ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.128"),
            ("1.2.3.4", "1.2.3.45", "2.25." + "1" * 59),
            (None, "MOVER"),
            (0, 60),
        )
    ),
)
def test_c_store_request_is_the_primitive_pynetdicom_reads(
    mid: int, priority: int, sop_class: str, sop_instance: str, originator: str | None, max_pdu: int
) -> None:
    p_datas = _p_datas(_request(mid, priority, sop_class, sop_instance, originator), max_pdu)
    ours_type, ours = _received(p_datas, _IncomingMessage.new())
    theirs_type, theirs = _received(p_datas, DIMSEMessage())
    assert _fields(ours) == _fields(theirs)
    # Read by hand unless a Move Originator or a command in several fragments.
    fast = originator is None and max_pdu == 0
    assert (ours_type is _IncomingCStoreRequest) is fast
    assert theirs_type is C_STORE_RQ


def test_command_and_data_set_in_one_p_data() -> None:
    p_datas = _p_datas(_request(9, 2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", None), 0)
    combined = P_DATA()
    combined.presentation_data_value_list.extend(
        item for p_data in p_datas for item in p_data.presentation_data_value_list
    )
    ours_type, ours = _received([combined], _IncomingMessage.new())
    assert ours_type is _IncomingCStoreRequest
    assert _fields(ours) == _fields(_received([combined], DIMSEMessage())[1])


def _command(*elements: tuple[int, bytes]) -> bytes:
    return b"".join(
        struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value for tag, value in elements
    )


_USUAL = {
    0x00000000: struct.pack("<L", 0),
    0x00000002: b"1.2.840.10008.5.1.4.1.1.2\x00",
    0x00000100: struct.pack("<H", 0x0001),
    0x00000110: struct.pack("<H", 7),
    0x00000700: struct.pack("<H", 2),
    0x00000800: struct.pack("<H", 0x0000),
    0x00001000: b"1.2.3.4 ",
}


def test_c_store_rq_fields_of_the_usual_command() -> None:
    assert c_store_rq_fields(_command(*_USUAL.items())) == (
        7,
        2,
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.3.4",
    )


@pytest.mark.parametrize(
    "change",
    [
        {0x00000100: struct.pack("<H", 0x0020)},  # a C-FIND
        {0x00000800: struct.pack("<H", 0x0101)},  # no data set
        {0x00000110: struct.pack("<L", 7)},  # a US of 4 bytes
        {0x00001000: b"1.2.3.4\\1.2.3.5 "},  # two UIDs
        {0x00001000: b"1.2.x"},
        {0x00001000: b""},
        {0x00001030: b"MOVER "},  # a Move Originator
        {0x00000700: None},  # Priority missing
    ],
    ids=["c-find", "no-data-set", "long-us", "two-uids", "bad-uid", "empty", "mover", "no-prio"],
)
def test_c_store_rq_fields_leaves_the_rest_to_pynetdicom(change: dict[int, bytes | None]) -> None:
    elements = {**_USUAL, **change}
    command = _command(*((tag, value) for tag, value in elements.items() if value is not None))
    assert c_store_rq_fields(command) is None


def test_c_store_rq_fields_of_truncated_or_repeated_elements() -> None:
    command = _command(*_USUAL.items())
    for cut in range(1, len(command)):
        assert c_store_rq_fields(command[:cut]) is None
    assert c_store_rq_fields(command + _command((0x00001000, b"1.2.3.4 "))) is None


def _refragmented(p_datas: list[P_DATA], sizes: list[int], per_p_data: int) -> list[P_DATA]:
    """The same message with its data set cut into fragments of ``sizes``
    (the rest in the last), ``per_p_data`` fragments to a P-DATA."""
    (command,) = p_datas[0].presentation_data_value_list
    data = b"".join(
        bytes(value[1:]) for p in p_datas[1:] for _, value in p.presentation_data_value_list
    )
    cuts = list(itertools.accumulate(sizes))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    values = [
        bytes([0x02 if n == len(pieces) - 1 else 0x00]) + piece for n, piece in enumerate(pieces)
    ]
    result = [p_datas[0]]
    for start in range(0, len(values), per_p_data):
        p_data = P_DATA()
        p_data.presentation_data_value_list.extend(
            (command[0], memoryview(value)) for value in values[start : start + per_p_data]
        )
        result.append(p_data)
    return result


@pytest.mark.parametrize("sizes", [[1], [1, 7, 100], [0, 3], [2000]])
@pytest.mark.parametrize("per_p_data", [1, 2, 10])
def test_data_set_in_many_fragments_is_the_one_pynetdicom_assembles(
    sizes: list[int], per_p_data: int
) -> None:
    request = _request(4, 0, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", None)
    p_datas = _refragmented(_p_datas(request, 0), sizes, per_p_data)
    ours_type, ours = _received(p_datas, _IncomingMessage.new())
    assert ours_type is _IncomingCStoreRequest
    assert _fields(ours) == _fields(_received(p_datas, DIMSEMessage())[1])


def test_a_command_amid_the_data_set_is_read_as_pynetdicom_reads_it() -> None:
    """Only a broken peer sends it; whatever pynetdicom makes of it, so do we."""
    request = _request(4, 0, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", None)
    first = _refragmented(_p_datas(request, 0), [10], 1)[:2]
    p_datas = [*first, *_p_datas(request, 0)]

    def outcome(message: DIMSEMessage) -> Any:
        for p_data in p_datas:
            try:
                if message.decode_msg(p_data, None):
                    return _fields(message.message_to_primitive())
            except Exception as exc:
                return type(exc)
        return "incomplete"

    assert outcome(_IncomingMessage.new()) == outcome(DIMSEMessage())
