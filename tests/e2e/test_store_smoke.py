from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.conftest import PYDICOM_TEST_FILES, ServerProcess


def test_c_store_of_a_ct_is_indexed_and_reads_back(pacs_server: ServerProcess) -> None:
    dataset = dcmread(PYDICOM_TEST_FILES / "CT_small.dcm")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, dataset.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", pacs_server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    status = assoc.send_c_store(dataset)
    assoc.release()
    assert status.Status == 0x0000
    counts = pacs_server.system()["counts"]
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
