"""Explicit VR Little Endian to Implicit VR Little Endian and back, on the bytes.

The two syntaxes differ only in their element headers (PS3.5 7.1.2, 7.1.3):
values are the same little endian bytes. So converting one to the other is a
new header per element and the values copied, pixel data included, without
building a pydicom data set. Through pydicom the header of a CT slice alone
(60 elements) costs ~4 ms of Python here; a workstation that accepts only
Implicit VR Little Endian (many older ones) or a DICOMweb client that wants
the default Explicit VR Little Endian of an instance a modality sent as
Implicit pays that on every image.

Implicit to explicit needs each element's VR from the data dictionary, and
private elements become UN (unknown, PS3.5 6.2.2), as with pydicom. Where the
dictionary's VR is ambiguous and the data set settles it, the rule pydicom
reads it by is applied: OB-or-OW data (Pixel Data, Overlay Data, waveform
data) in Implicit VR are OW (PS3.5 A.1); pixel values and LUT descriptors are
SS when the nearest Pixel Representation is 1. Anything else this does not
settle (another ambiguous VR, a short VR with a value over 64 kB, an
undefined-length element that is no sequence, a malformed encoding) returns
``None``, and the caller takes pydicom's way. Sequences and items are written
with undefined lengths and delimiters, which both syntaxes allow, so no length
needs computing.
"""

from __future__ import annotations

import struct

from pydicom.datadict import dictionary_VR

from pacs.encoded import ITEM, ITEM_DELIMITER, LONG_VRS, SEQUENCE_DELIMITER, UNDEFINED_LENGTH

_PIXEL_REPRESENTATION = 0x00280103
# 'US or SS' elements whose VR follows Pixel Representation (0028,0103): pixel
# values, LUT descriptors and the like; the list pydicom's writer corrects.
_PIXEL_VALUED = frozenset(
    {
        0x00189810,
        0x00221452,
        0x00280104,
        0x00280105,
        0x00280106,
        0x00280107,
        0x00280108,
        0x00280109,
        0x00280110,
        0x00280111,
        0x00280120,
        0x00280121,
        0x00281101,
        0x00281102,
        0x00281103,
        0x00283002,
        0x00409211,
        0x00409216,
        0x00603004,
        0x00603006,
    }
)
_MAX_DEPTH = 64

_TAG_LENGTH = struct.Struct("<HHL")
_TAG_VR_SHORT = struct.Struct("<HH2sH")
_TAG_VR_LONG = struct.Struct("<HH2s2xL")
_LENGTH = struct.Struct("<L")
_ITEM_START = _TAG_LENGTH.pack(0xFFFE, 0xE000, UNDEFINED_LENGTH)
_ITEM_STOP = _TAG_LENGTH.pack(0xFFFE, 0xE00D, 0)
_SEQUENCE_STOP = _TAG_LENGTH.pack(0xFFFE, 0xE0DD, 0)


class _Unsettled(Exception):
    """Something this fast path leaves to pydicom."""


def reencode_little_endian(data: bytes | memoryview, *, to_implicit: bool) -> bytes | None:
    """``data`` (a data set in Explicit VR Little Endian when ``to_implicit``,
    else in Implicit VR Little Endian) in the other syntax; ``None`` where the
    conversion needs pydicom (see the module's docstring)."""
    converter = _Converter(memoryview(data), to_implicit)
    try:
        converter.elements(0, len(data), 0, closed_by_delimiter=False)
    except (_Unsettled, struct.error, KeyError, ValueError):
        return None
    return b"".join(converter.out)


class _Converter:
    def __init__(self, view: memoryview, to_implicit: bool) -> None:
        self.view = view
        self.to_implicit = to_implicit
        self.out: list[bytes | memoryview] = []
        # Pixel Representation of the data set and of each item open, nearest
        # last: pydicom takes the nearest one for an ambiguous value's VR.
        self.pixel_representations: list[int | None] = [None]

    def elements(self, start: int, end: int, depth: int, *, closed_by_delimiter: bool) -> int:
        """Convert elements from ``start`` to ``end`` (or an item delimiter); return the stop."""
        if depth > _MAX_DEPTH:
            raise _Unsettled
        view, position = self.view, start
        while position < end:
            group, element, length = _TAG_LENGTH.unpack_from(view, position)
            tag = group << 16 | element
            if tag == ITEM_DELIMITER:
                if not closed_by_delimiter:
                    raise _Unsettled
                return position + 8
            if tag in (ITEM, SEQUENCE_DELIMITER):
                raise _Unsettled
            if self.to_implicit:
                _, _, explicit_vr, length = _TAG_VR_SHORT.unpack_from(view, position)
                vr = bytes(explicit_vr)
                if vr in LONG_VRS:
                    (length,) = _LENGTH.unpack_from(view, position + 8)
                    value_start = position + 12
                else:
                    value_start = position + 8
            else:
                value_start = position + 8
                vr = self._vr(tag, length)
            if vr == b"SQ":
                self.out.append(self._header(group, element, b"SQ", UNDEFINED_LENGTH))
                position = self.items(value_start, length, end, depth)
                self.out.append(_SEQUENCE_STOP)
                continue
            if length == UNDEFINED_LENGTH:
                raise _Unsettled  # encapsulated pixel data, an undefined-length UN
            value_end = value_start + length
            if value_end > end:
                raise _Unsettled
            if tag == _PIXEL_REPRESENTATION and not self.to_implicit:
                self._note(view[value_start:value_end])
            self.out.append(self._header(group, element, vr, length))
            self.out.append(view[value_start:value_end])
            position = value_end
        if closed_by_delimiter or position != end:
            raise _Unsettled
        return position

    def items(self, start: int, length: int, end: int, depth: int) -> int:
        """Convert a sequence's items; return the offset after the sequence."""
        view = self.view
        stop = end if length == UNDEFINED_LENGTH else start + length
        if stop > end:
            raise _Unsettled
        position = start
        while position < stop:
            group, element, item_length = _TAG_LENGTH.unpack_from(view, position)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER:
                if length != UNDEFINED_LENGTH:
                    raise _Unsettled
                return position + 8
            if tag != ITEM:
                raise _Unsettled
            self.out.append(_ITEM_START)
            self.pixel_representations.append(None)
            if item_length == UNDEFINED_LENGTH:
                position = self.elements(position + 8, stop, depth + 1, closed_by_delimiter=True)
            else:
                item_end = position + 8 + item_length
                if item_end > stop:
                    raise _Unsettled
                position = self.elements(
                    position + 8, item_end, depth + 1, closed_by_delimiter=False
                )
            self.pixel_representations.pop()
            self.out.append(_ITEM_STOP)
        if length == UNDEFINED_LENGTH or position != stop:
            raise _Unsettled  # no sequence delimiter, or an item past the length
        return position

    def _header(self, group: int, element: int, vr: bytes, length: int) -> bytes:
        if self.to_implicit:
            return _TAG_LENGTH.pack(group, element, length)
        if vr in LONG_VRS:
            return _TAG_VR_LONG.pack(group, element, vr, length)
        if length > 0xFFFF:
            raise _Unsettled  # pydicom writes it as UN
        return _TAG_VR_SHORT.pack(group, element, vr, length)

    def _note(self, value: memoryview) -> None:
        """Keep a Pixel Representation (it comes before the values it rules)."""
        if len(value) != 2:
            raise _Unsettled
        self.pixel_representations[-1] = value[0] | value[1] << 8

    def _vr(self, tag: int, length: int) -> bytes:
        """The VR an Implicit VR element gets, as pydicom's reader gives it."""
        element = tag & 0xFFFF
        if element == 0:
            return b"UL"  # group length
        if tag >> 16 & 1:
            if 0x10 <= element <= 0xFF:
                return b"LO"  # private creator
            if length == UNDEFINED_LENGTH:
                return b"SQ"  # PS3.5 7.5: only a sequence has an undefined length
            return b"UN"
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return b"SQ" if length == UNDEFINED_LENGTH else b"UN"
        if vr == "OB or OW":
            # Pixel Data, Overlay Data, waveform data: OW in Implicit VR (PS3.5 A.1, 8.1.2).
            return b"OW"
        if vr == "US or SS" and tag in _PIXEL_VALUED:
            known = [p for p in self.pixel_representations if p is not None]
            if not known or tag >> 16 < 0x0028:
                # None yet, or one that may follow in this data set (0018,9810 sorts first).
                raise _Unsettled
            return b"SS" if known[-1] == 1 else b"US"
        if len(vr) != 2:
            raise _Unsettled
        if length == UNDEFINED_LENGTH and vr != "SQ":
            raise _Unsettled
        return vr.encode()


__all__ = ["reencode_little_endian"]
