"""The content hash that tells two copies of one SOP Instance apart.

Kept in the index for every instance: a modality that re-sends after a lost
acknowledgement sends the same bytes, and the hash says so without reading
the stored copy back. It also keys caches of frames converted from an
instance, so it must be a cryptographic hash: no sender may make two
different images share one.
"""

from __future__ import annotations

import hashlib

from blake3 import blake3

_BLAKE3 = "blake3:"


def content_hash(data: bytes | memoryview) -> str:
    """BLAKE3 of the encoded data set, named: 0.14 ms for a 512 kB CT slice
    here against SHA-256's 0.3-0.47 (OpenSSL with SHA-NI), on every C-STORE."""
    return _BLAKE3 + blake3(data).hexdigest()


def same_content(stored_hash: str, data: bytes | memoryview, data_hash: str) -> bool:
    """Whether ``data`` (whose ``content_hash`` is ``data_hash``) is the
    content that ``stored_hash`` was made from.

    Archives written before BLAKE3 hold bare SHA-256 hex digests: those are
    compared as SHA-256, so re-sending an image stored then is still a duplicate.
    """
    if stored_hash.startswith(_BLAKE3):
        return stored_hash == data_hash
    return stored_hash == hashlib.sha256(data).hexdigest()
