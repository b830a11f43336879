"""The one table from archive errors to HTTP statuses (PS3.18 8.6.3).

    NotFoundError                   404 Not Found
    InvalidQueryError               400 Bad Request
    InvalidDatasetError             400 Bad Request (409 in STOW-RS, per instance)
    UnsupportedTransferSyntaxError  406 Not Acceptable (415 in STOW-RS)
    ConflictError                   409 Conflict
    CorruptDataError                500 Internal Server Error (the stored data, with the reason)
    StorageFullError                507 Insufficient Storage
    StorageError                    503 Service Unavailable

A response body is a short plain-text reason, never a traceback.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, Response

from pacs.errors import (
    ConflictError,
    CorruptDataError,
    InvalidDatasetError,
    InvalidQueryError,
    NotFoundError,
    PacsError,
    StorageError,
    StorageFullError,
    UnsupportedTransferSyntaxError,
)


class DicomWebError(Exception):
    """A request the front end refuses itself (bad parameter, media type...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_STATUSES: tuple[tuple[type[PacsError], int], ...] = (
    (NotFoundError, 404),
    (InvalidQueryError, 400),
    (InvalidDatasetError, 400),
    (UnsupportedTransferSyntaxError, 406),
    (ConflictError, 409),
    (CorruptDataError, 500),
    (StorageFullError, 507),
    (StorageError, 503),
)


def http_status(error: PacsError) -> int:
    for error_type, status in _STATUSES:
        if isinstance(error, error_type):
            return status
    return 500


def error_response(status: int, reason: str) -> Response:
    return PlainTextResponse(reason.replace("\n", " ")[:500] + "\n", status_code=status)
