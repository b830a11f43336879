"""Rendered pictures of stored frames, with a bounded cache.

A viewer asks for the same frame with the same window again and again
(scrolling back, two viewports); the cache keeps recent pictures keyed by
everything that changes the result, bounded in bytes, not entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pacs.pixels.pipeline import Window

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class RenderRequest:
    """What changes a rendered picture (PS3.18 8.3.5.1 query parameters)."""

    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: tuple[int, int] | None = None
    """(rows, columns) the picture must fit in, keeping its shape."""
    quality: int = 90


@dataclass(frozen=True, slots=True)
class Picture:
    """A rendered frame and its strong HTTP validator."""

    data: bytes
    media_type: str
    etag: str
    """Made from the instance's content hash and the request, not by hashing ``data``:
    the same in every server process, and free to compute."""
    modified: str = ""
    """When the instance was stored (ISO 8601): the picture's Last-Modified."""


class SizeBoundedCache(Generic[V]):
    """A thread-safe LRU cache bounded by the total size of its values in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        if size > self._max_bytes // 4:
            return  # one huge value would push out everything else
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= old[1]
            self._entries[key] = (value, size)
            self._size += size
            while self._size > self._max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._size -= dropped
