"""Sending Part 10 instances to a known node as a Storage SCU (PS3.4 B.2).

For commands that push what the archive made (``pacs deidentify --node``): one
association, one C-STORE per instance, a status per instance. Each instance is
offered in its own transfer syntax, with the uncompressed ones as fall-backs;
a compressed instance that the node accepts only uncompressed is decoded
(``pacs.pixels.transcode``) on the way out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from types import TracebackType

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import code_to_category

from pacs.config import Node, Settings
from pacs.core.encoding import split_part10
from pacs.dimse.transport import guard_reactor
from pacs.errors import PacsError
from pacs.pixels import transcode

log = logging.getLogger(__name__)

_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd presentation context IDs 1-255


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The outcome of one C-STORE: ``status`` is the response's (PS3.4 B.2.3),
    ``None`` when none came; ``category`` is pynetdicom's Success, Warning or
    Failure."""

    sop_instance_uid: str
    status: int | None
    category: str
    reason: str = ""

    @property
    def stored(self) -> bool:
        return self.category in ("Success", "Warning")


class StoreSCU:
    """An association with ``node`` for storing instances of the given
    (SOP Class UID, Transfer Syntax UID) pairs. Use as a context manager."""

    def __init__(
        self, settings: Settings, node: Node, presentations: Iterable[tuple[str, str]]
    ) -> None:
        self.node = node
        self._settings = settings
        self._contexts = _contexts(presentations)
        self._ae = AE(ae_title=settings.ae_title)
        self._ae.acse_timeout = settings.acse_timeout
        self._ae.dimse_timeout = settings.dimse_timeout
        self._ae.network_timeout = settings.network_timeout
        self._assoc: Association | None = None

    def __enter__(self) -> StoreSCU:
        assoc = self._ae.associate(
            self.node.host,
            self.node.port,
            contexts=self._contexts,
            ae_title=self.node.ae_title,
            max_pdu=self._settings.max_pdu_size,
        )
        if not assoc.is_established:
            self._ae.shutdown()
            raise PacsError(f"cannot associate with {self.node} (refused, aborted or unreachable)")
        # Many C-STOREs in a row over one plain pynetdicom association.
        self._assoc = guard_reactor(assoc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._ae.shutdown()

    def send(self, part10: bytes, sop_class_uid: str, sop_instance_uid: str) -> StoreStatus:
        """C-STORE one Part 10 file; never raises for the peer's refusal."""
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            return StoreStatus(sop_instance_uid, None, "Failure", "the association is gone")
        accepted = [
            str(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class_uid
        ]
        if not accepted:
            what = UID(sop_class_uid).name
            reason = f"{self.node.ae_title} accepted no presentation context for {what}"
            return StoreStatus(sop_instance_uid, None, "Failure", reason)
        try:
            dataset = _dataset_for(part10, accepted)
        except PacsError as exc:
            return StoreStatus(sop_instance_uid, None, "Failure", str(exc))
        try:
            response = assoc.send_c_store(dataset)
        except (ValueError, AttributeError, RuntimeError) as exc:
            return StoreStatus(sop_instance_uid, None, "Failure", f"cannot send: {exc}")
        status = getattr(response, "Status", None)
        if status is None:
            return StoreStatus(
                sop_instance_uid, None, "Failure", "no C-STORE response (timed out or aborted)"
            )
        category = str(code_to_category(int(status)))
        comment = str(getattr(response, "ErrorComment", "") or "")
        return StoreStatus(sop_instance_uid, int(status), category, comment)


def _contexts(presentations: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Per SOP class, one context per transfer syntax it is held in, then one
    with the uncompressed ones (a peer accepts one syntax per context)."""
    syntaxes: dict[str, list[str]] = {}
    for sop_class, transfer_syntax in presentations:
        held = syntaxes.setdefault(sop_class, [])
        if transfer_syntax not in held:
            held.append(transfer_syntax)
    contexts = []
    for sop_class, held in syntaxes.items():
        contexts += [build_context(sop_class, [ts]) for ts in held if ts not in _UNCOMPRESSED]
        contexts.append(build_context(sop_class, list(_UNCOMPRESSED)))
    if len(contexts) > _MAX_CONTEXTS:
        log.warning("more than %d presentation contexts; some instances will fail", _MAX_CONTEXTS)
    return contexts[:_MAX_CONTEXTS]


def _dataset_for(part10: bytes, accepted: list[str]) -> Dataset:
    """The file as a data set pynetdicom can send over one of ``accepted``."""
    dataset = dcmread(BytesIO(part10))
    source = str(dataset.file_meta.TransferSyntaxUID)
    if source in accepted:
        return dataset
    # pynetdicom converts between the uncompressed little endian syntaxes itself.
    if source in _UNCOMPRESSED and any(ts in _UNCOMPRESSED for ts in accepted):
        return dataset
    target = next((ts for ts in _UNCOMPRESSED if ts in accepted), None)
    if target is None:
        raise PacsError(f"the node accepts neither {source} nor an uncompressed syntax")
    _, offset = split_part10(part10)
    converted = transcode(part10[offset:], source, target)
    uid = UID(target)
    out = read_dataset(BytesIO(converted), uid.is_implicit_VR, uid.is_little_endian)
    out.file_meta = dataset.file_meta
    out.file_meta.TransferSyntaxUID = uid
    return out


__all__ = ["StoreSCU", "StoreStatus"]
