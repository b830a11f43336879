"""Socket tuning of pynetdicom's acceptor, through its request-handler hook.

pynetdicom leaves Nagle's algorithm on, so every small DIMSE response waits for
the peer's delayed ACK (~40 ms, capping a modality at ~25 images/s), and it
reads each PDU 4 KiB at a time into a growing bytearray. Both are changed here
without touching pynetdicom's protocol code.

We also tried replacing the two reactors' 1 ms polling sleeps with blocking
waits; on this 2-core machine it was slower (the woken DUL thread competes for
the GIL with the thread storing the instance), so pynetdicom's loops are kept.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pynetdicom.transport import AssociationSocket, RequestHandler

if TYPE_CHECKING:
    from pynetdicom.association import Association


class SingleCopyAssociationSocket(AssociationSocket):
    """Reads each PDU with ``recv_into`` a buffer of its exact size."""

    def recv(self, nr_bytes: int) -> bytearray:
        assert self.socket is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = self.socket.recv_into(view[received:], nr_bytes - received)
            if not count:
                # Peer closed: return what arrived; pynetdicom treats it as a broken PDU.
                return buffer[:received]
            received += count
        return buffer


class TunedRequestHandler(RequestHandler):
    def _create_association(self) -> Association:
        client = self.request
        if isinstance(client, socket.socket) and client.family in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assoc = super()._create_association()
        # Same object and state; only the read method differs.
        assoc.dul.socket.__class__ = SingleCopyAssociationSocket
        return assoc
