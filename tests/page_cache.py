"""What of a file is in the page cache, asked without bringing any of it in."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path

import pytest


def cached_pages(path: Path) -> int:
    """Pages of the file in the page cache (mincore(2) on a mapping that is never
    touched: unlike a read, asking does not bring any page in)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        start = ctypes.c_char.from_buffer(mapping)
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.c_void_p(ctypes.addressof(start))
        result = libc.mincore(address, ctypes.c_size_t(size), vector)
        del start
        assert result == 0, os.strerror(ctypes.get_errno())
        return sum(v & 1 for v in vector)
    finally:
        mapping.close()


def drop_from_page_cache(path: Path) -> None:
    """Out of the page cache, or the test is skipped: a filesystem that keeps
    files in memory (tmpfs) cannot drop them, and then nothing is read from a
    disk anyway."""
    fd = os.open(path, os.O_RDONLY)
    try:  # the kernel may skip pages another CPU has just touched: a few tries
        for _ in range(20):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            if cached_pages(path) == 0:
                return
            time.sleep(0.05)
    finally:
        os.close(fd)
    pytest.skip(f"the filesystem of {path.parent} keeps it in memory (tmpfs?)")


def nowait_reads(path: Path) -> bool:
    """Whether the filesystem of ``path`` takes ``RWF_NOWAIT`` reads (ext4, XFS
    and btrfs do; tmpfs does not, and then every read goes to a worker thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
