"""A pynetdicom SCU for the end-to-end tests: associations and bulk stores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association

from pacs.dimse.transport import guard_reactor
from tests.conftest import ServerProcess

SUCCESS = 0x0000


@contextlib.contextmanager
def association(
    server: ServerProcess,
    contexts: Sequence[tuple[str, str | list[str] | None]],
    *,
    ae_title: str,
    roles: Sequence[str] = (),
    on_store: evt.EventHandlerType | None = None,
    timeout: float = 30.0,
) -> Iterator[Association]:
    """An association with the server; ``roles`` are SOP classes we take the SCP role
    for (C-GET), ``on_store`` handles the C-STOREs we then receive."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        server.dicom_port,
        ae_title=server.ae_title,
        ext_neg=[build_role(sop_class, scp_role=True) for sop_class in roles],
        evt_handlers=[(evt.EVT_C_STORE, on_store)] if on_store else [],
    )
    assert assoc.is_established, f"association refused; server log:\n{server.log()}"
    guard_reactor(assoc)  # several requests in a row: pynetdicom could drop a response
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def store_all(
    server: ServerProcess, datasets: Sequence[Dataset], *, ae_title: str, timeout: float = 30.0
) -> None:
    """C-STORE every data set over one association; each must succeed."""
    contexts = sorted({(str(ds.SOPClassUID), ExplicitVRLittleEndian) for ds in datasets})
    with association(server, contexts, ae_title=ae_title, timeout=timeout) as assoc:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assert statuses == [SUCCESS] * len(datasets), server.log()


@contextlib.contextmanager
def raw_sending() -> Iterator[None]:
    """Make ``send_c_store(path)`` send the file's bytes after the meta untouched.

    With this pynetdicom setting the data set is never decoded or re-encoded,
    so the server receives exactly the file's encoding, malformed or not.
    """
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
