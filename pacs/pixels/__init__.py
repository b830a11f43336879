"""The imaging core: pixel decoding and transfer syntax conversion.

Functions here are pure (bytes in, bytes out) and never touch the archive.
"""

from pacs.pixels.frames import bulk_value, decode_frames
from pacs.pixels.transcode import NATIVE_SYNTAXES, can_transcode, encodable, transcode

__all__ = [
    "NATIVE_SYNTAXES",
    "bulk_value",
    "can_transcode",
    "decode_frames",
    "encodable",
    "transcode",
]
