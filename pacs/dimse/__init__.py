"""The DICOM network front end (pynetdicom): it translates DIMSE to archive calls."""

from pacs.dimse.scp import DicomNode

__all__ = ["DicomNode"]
