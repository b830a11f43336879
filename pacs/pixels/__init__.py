"""The imaging core: pixel decoding, transfer syntax conversion and rendering.

Functions here are pure (bytes in, bytes out) and never touch the archive.
"""

from pacs.pixels.codecs import FrameFormat, LossyQuality
from pacs.pixels.frames import bulk_value, decode_frames
from pacs.pixels.transcode import (
    ENCODED_TARGETS,
    LOSSY_TARGETS,
    NATIVE_SYNTAXES,
    UNCOMPRESSED_TARGETS,
    can_transcode,
    frame_format,
    refusal,
    transcode,
)

__all__ = [
    "ENCODED_TARGETS",
    "LOSSY_TARGETS",
    "NATIVE_SYNTAXES",
    "UNCOMPRESSED_TARGETS",
    "FrameFormat",
    "LossyQuality",
    "bulk_value",
    "can_transcode",
    "decode_frames",
    "frame_format",
    "refusal",
    "transcode",
]
