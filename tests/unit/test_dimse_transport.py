"""What pacs reads and writes around pynetdicom's codecs is what they give:
the C-STORE response bytes, the values of a P-DATA-TF PDU."""

from __future__ import annotations

import itertools
import socket
from typing import Any

import pytest
from pydicom.tag import Tag
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from pacs.dimse.transport import (
    BatchingDUL,
    TunedAE,
    _viewed_pdv_items,
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
