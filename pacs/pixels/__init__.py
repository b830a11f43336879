"""The imaging core: pixel decoding and transfer syntax conversion.

Functions here are pure (bytes in, bytes out) and never touch the archive.
"""

from pacs.pixels.transcode import can_transcode, transcode

__all__ = ["can_transcode", "transcode"]
