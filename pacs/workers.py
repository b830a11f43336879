"""DICOM worker processes: more than one core for many concurrent associations.

Python runs one thread at a time per process, and pynetdicom spends several
milliseconds of Python per image, so one process tops out near one core however
many modalities send at once. ``pacs serve`` therefore starts ``dicom_processes
- 1`` workers. The main process keeps the only listening socket and deals
accepted connections round-robin between itself and the workers, passing the
file descriptor over a Unix socket (SCM_RIGHTS). Each worker has its own
archive objects over the same data folder; the index serialises writers across
processes and the blob store's temporaries are per process.

A worker that dies is noticed at the next connection dealt to it: that
connection is served here and a new worker takes the dead one's place (at most
``_MAX_RESTARTS`` per minute, so that a worker that cannot start does not spin).
Closing a worker's channel is its signal to finish the associations it has and
exit.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import socket
import threading
import time
from multiprocessing.process import BaseProcess

from pacs.config import Settings

log = logging.getLogger(__name__)

_MESSAGE_SIZE = 1024
_MAX_RESTARTS = 5


def worker_count(settings: Settings) -> int:
    processes = settings.dicom_processes or min(os.cpu_count() or 1, 8)
    return max(processes, 1) - 1


class DicomWorkers:
    """Start, feed and stop the worker processes from the main process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[BaseProcess, socket.socket]] = []
        self._turns = itertools.count()
        self._lock = threading.Lock()
        self._restarts: list[float] = []

    def _spawn(self, number: int) -> tuple[BaseProcess, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=run_worker,
            args=(self.settings, theirs, number),
            name=f"pacs-dicom-worker-{number}",
            daemon=True,
        )
        process.start()
        theirs.close()
        return process, ours

    def start(self) -> None:
        for number in range(worker_count(self.settings)):
            self._workers.append(self._spawn(number + 1))
        if self._workers:
            log.info("%d DICOM worker process(es) started", len(self._workers))

    def _replace(self, index: int) -> None:
        """Put a new worker in the place of the dead one at ``index``, if allowed."""
        process, channel = self._workers[index]
        channel.close()
        process.join(0)  # reap it
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < 60]
        if len(self._restarts) >= _MAX_RESTARTS:
            log.error("DICOM workers keep dying; serving without %s", process.name)
            del self._workers[index]
            return
        self._restarts.append(now)
        number = int(process.name.rsplit("-", 1)[1])
        self._workers[index] = self._spawn(number)
        log.warning("DICOM worker %s was replaced", process.name)

    def dispatch(self, connection: socket.socket, address: tuple[str, int]) -> bool:
        """Round-robin over this process (``False``: serve here) and the workers."""
        with self._lock:
            if not self._workers:
                return False
            turn = next(self._turns) % (len(self._workers) + 1)
            if turn == 0:
                return False
            process, channel = self._workers[turn - 1]
            try:
                message = json.dumps([address[0], address[1]]).encode()
                socket.send_fds(channel, [message], [connection.fileno()])
            except OSError as exc:
                log.error("DICOM worker %s is gone (%s); serving here", process.name, exc)
                self._replace(turn - 1)
                return False
            return True

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for _, channel in workers:
            channel.close()  # tells the worker to finish and exit
        for process, _ in workers:
            process.join(timeout)
            if process.is_alive():
                log.warning("DICOM worker %s did not stop; terminating it", process.name)
                process.terminate()
                process.join(5)


def run_worker(settings: Settings, channel: socket.socket, number: int) -> None:
    """Entry point of a worker process: serve the connections the main process sends."""
    from pacs.app import build_archive, configure_libraries, configure_logging
    from pacs.dimse import DicomNode

    configure_logging(settings)
    configure_libraries()
    archive = build_archive(settings)
    node = DicomNode(archive, settings, listen=False)
    node.start()
    log.debug("DICOM worker %d ready", number)
    try:
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(channel, _MESSAGE_SIZE, 1)
            except OSError:
                break
            if not message and not fds:
                break  # main process closed the channel
            if not fds:
                continue
            host, port = json.loads(message)
            connection = socket.socket(fileno=fds[0])
            # The descriptor keeps the listener's non-blocking flag; pynetdicom
            # expects a blocking socket, as accept() gives the main process.
            connection.settimeout(None)
            node.serve_handed_over(connection, (host, port))
    except KeyboardInterrupt:
        pass  # the terminal's Ctrl-C reaches every process of the group
    finally:
        node.stop()
        archive.close()
