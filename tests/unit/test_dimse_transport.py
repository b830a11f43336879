"""The C-STORE response written without pynetdicom's encoder gives its bytes."""

from __future__ import annotations

import itertools

import pytest
from pydicom.tag import Tag
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from pacs.dimse.transport import c_store_rsp_command


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
