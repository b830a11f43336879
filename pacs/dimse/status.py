"""The one table from archive errors to DIMSE statuses (PS3.4 B.2.3, PS3.7 C).

C-STORE:
    0x0000  Success
    0x0111  Duplicate SOP Instance (PS3.7 C.5): same UID, different content,
            under duplicate_policy = "reject"
    0xA700  Refused: Out of Resources (blob store or index cannot take it; disk full)
    0xA900  Error: Data Set does not match SOP Class (UIDs differ from the request)
    0xC000  Error: Cannot understand (malformed encoding, missing or bad UIDs)
    0x0110  Processing failure (an unexpected error; logged with its traceback)
    0x0124  Refused: Not authorized (PS3.7 C.4): a known node without "store" rights

Query/Retrieve statuses live beside their SCPs in ``find`` and ``retrieve``.
"""

from __future__ import annotations

from pacs.errors import (
    ConflictError,
    DatasetMismatchError,
    InvalidDatasetError,
    PacsError,
    StorageError,
)

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

# Checked in order: a subclass must come before its base.
_STORE_STATUSES: tuple[tuple[type[PacsError], int], ...] = (
    (DatasetMismatchError, DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
    (InvalidDatasetError, CANNOT_UNDERSTAND),
    (ConflictError, DUPLICATE_SOP_INSTANCE),
    (StorageError, OUT_OF_RESOURCES),
)


def store_status(error: PacsError) -> int:
    for error_type, status in _STORE_STATUSES:
        if isinstance(error, error_type):
            return status
    return PROCESSING_FAILURE
