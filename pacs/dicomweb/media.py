"""Media types: Accept header negotiation and multipart/related bodies (PS3.18 8.7)."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydicom.uid import UID

from pacs.dicomweb.errors import DicomWebError

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET_STREAM = "application/octet-stream"

Buffer = bytes | bytearray
"""A body piece: frames read in place arrive as ``bytearray``."""

# PS3.18 Table 8.7.3-2/-3: the media type of a compressed frame or bulk value.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}


# PS3.18 Table 8.7.3-5: the transfer syntax a frame media type means when
# Accept names none.
DEFAULT_FRAME_SYNTAXES = {
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
}


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One entry of an Accept header, with multipart/related unwrapped."""

    media_type: str
    """The part's media type (``application/dicom``), or ``*/*``."""
    transfer_syntax: str | None
    """``*``, a UID, or ``None`` when not given."""
    multipart: bool
    params: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=256)
def parse_accept(header: str | None) -> tuple[MediaRange, ...]:
    """Accept header entries in order of preference (q values respected).

    Cached: a client sends the same few headers again and again (a viewer's
    every frame), and parsing one costs more than the rest of a frame request's
    routing."""
    if not header or not header.strip():
        return (MediaRange("*/*", None, False),)
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, entry in enumerate(_split_outside_quotes(header, ",")):
        parts = _split_outside_quotes(entry, ";")
        main = parts[0].strip().lower()
        if not main:
            continue
        params: dict[str, str] = {}
        for part in parts[1:]:
            name, _, value = part.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 1.0
        if quality <= 0:
            continue
        multipart = main == "multipart/related"
        media_type = params.get("type", "").lower() if multipart else main
        ranges.append(
            (
                -quality,
                position,
                MediaRange(media_type or "*/*", params.get("transfer-syntax"), multipart, params),
            )
        )
    ranges.sort(key=lambda item: (item[0], item[1]))
    return tuple(media_range for _, _, media_range in ranges)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def matches(media_range: MediaRange, media_type: str) -> bool:
    wanted = media_range.media_type
    if wanted in ("*/*", "*"):
        return True
    if wanted.endswith("/*"):
        return media_type.startswith(wanted[:-1])
    return wanted == media_type


def require_json(accept: str | None) -> None:
    """406 unless the client takes DICOM JSON (QIDO-RS results, metadata)."""
    for media_range in parse_accept(accept):
        if media_range.media_type in ("*/*", "*", "application/*"):
            return
        if not media_range.multipart and media_range.media_type in (DICOM_JSON, "application/json"):
            return
    raise DicomWebError(406, f"this resource is sent as {DICOM_JSON}")


def frame_numbers(frame_list: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; frame numbers start at 1 (PS3.18 8.3.3.1), else 400."""
    try:
        numbers = [int(n) for n in frame_list.split(",") if n.strip()]
    except ValueError:
        raise DicomWebError(
            400, f"frame list {frame_list!r} is not comma-separated numbers"
        ) from None
    if not numbers or any(n < 1 for n in numbers):
        raise DicomWebError(400, "frame numbers start at 1")
    return numbers


def checked_transfer_syntax(value: str | None) -> str | None:
    """``None`` for ``*`` (as stored); else a known transfer syntax UID or 400."""
    if value is None or value == "*":
        return None
    if not UID(value).is_transfer_syntax:
        raise DicomWebError(400, f"transfer-syntax {value!r} is not a transfer syntax UID")
    return value


# 70 hex digits, RFC 2046's longest: a longer needle is found faster in a frame.
_PROCESS_BOUNDARY = secrets.token_hex(35)
"""The boundary of bodies whose values are known before the headers go
(``Multipart.around``): one per process, not per response, because Python's
HTTP clients (``http.client``, so ``requests`` and ``dicomweb-client``) parse
a multipart Content-Type with the ``email`` package, which compiles a regular
expression for each boundary it has not seen: ~0.15 ms of the client's CPU
for every frame a script asks for, a third of an uncompressed CT frame's
round trip here (``benchmarks/README.md``)."""

_CHECKED_AT_MOST = 8 << 20


def _held_in(delimiter: bytes, values: Sequence[Buffer]) -> bool:
    return any(delimiter in value for value in values)


class Multipart:
    """Writes a multipart/related body part by part (RFC 2387)."""

    def __init__(self, part_type: str, boundary: str | None = None) -> None:
        self.boundary = boundary or secrets.token_hex(16)
        self.part_type = part_type

    @classmethod
    def around(cls, part_type: str, values: Sequence[Buffer]) -> Multipart:
        """A writer for a body of ``values`` held in full: the process's
        boundary, unless a value holds it (one could: every client sees it, and
        any sender may store pixels), then a fresh one that none holds. So the
        boundary is known not to occur in the body (RFC 2046 5.1.1), where a
        random one per response only makes that likely; checking costs ~20 µs
        per 512 kB frame. A body over ``_CHECKED_AT_MOST`` gets a random one
        unchecked, as every body did before: there one compile is nothing
        beside the transfer, while the check grows with the body (~40 µs a MB)."""
        if sum(len(value) for value in values) > _CHECKED_AT_MOST:
            return cls(part_type)
        boundary = _PROCESS_BOUNDARY
        while _held_in(f"--{boundary}".encode(), values):
            boundary = secrets.token_hex(16)
        return cls(part_type, boundary)

    def content_type(self, transfer_syntax: str | None = None) -> str:
        value = f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'
        if transfer_syntax:
            value += f"; transfer-syntax={transfer_syntax}"
        return value

    def head(
        self, media_type: str, headers: Mapping[str, str] | None = None, **params: str
    ) -> bytes:
        """A part's delimiter and headers: Content-Type (``params`` its
        parameters, ``_`` written ``-``), then ``headers``."""
        header = media_type + "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
        more = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        return f"--{self.boundary}\r\nContent-Type: {header}\r\n{more}\r\n".encode("ascii")

    def tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode("ascii")

    @staticmethod
    def part_end() -> bytes:
        return b"\r\n"

    def pieces(
        self,
        values: Sequence[Buffer],
        media_type: str,
        part_headers: Sequence[Mapping[str, str] | None] = (),
        **params: str,
    ) -> list[Buffer]:
        """A whole body of ``values`` as its pieces, in order: each value as it
        is (not copied), the delimiters between two values joined into one
        piece (each piece is one write to the socket, and a packet).
        ``part_headers``, when given, holds more headers for each part."""
        pieces: list[Buffer] = []
        between = b""
        for position, value in enumerate(values):
            headers = part_headers[position] if part_headers else None
            pieces += (between + self.head(media_type, headers, **params), value)
            between = self.part_end()
        pieces.append(between + self.tail())
        return pieces

    def body(
        self,
        values: Sequence[Buffer],
        media_type: str,
        part_headers: Sequence[Mapping[str, str] | None] = (),
        **params: str,
    ) -> bytes:
        """A whole body of ``values``, each copied once: ``head + value + end``
        made two more copies, 1.5 ms of a 2.7 ms uncompressed CT frame here."""
        return b"".join(self.pieces(values, media_type, part_headers, **params))
