"""A progress line for long commands (``pacs import``, ``pacs migrate-storage``).

On a terminal one line rewritten in place five times a second; in a log, a
line every five seconds; always a last line at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None, describe: Callable[[float], str]) -> None:
        """``describe(elapsed seconds)`` gives the line's text."""
        self._stream = stream
        self._describe = describe
        self._started = time.monotonic()
        self._last = 0.0
        self._interactive = stream is not None and stream.isatty()

    def report(self, final: bool = False) -> None:
        stream = self._stream
        now = time.monotonic()
        interval = 0.2 if self._interactive else 5.0
        if stream is None or (not final and now - self._last < interval):
            return
        self._last = now
        line = self._describe(max(now - self._started, 1e-9))
        stream.write(("\r" + line + " " * 4) if self._interactive else line + "\n")
        if final and self._interactive:
            stream.write("\n")
        stream.flush()
