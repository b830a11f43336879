"""DICOMweb (PS3.18): QIDO-RS, WADO-RS, STOW-RS under ``/dicom-web``, WADO-URI at ``/wado``.

Endpoints translate HTTP to ``Archive`` calls and back; ``errors`` holds the
one table from archive errors to HTTP statuses.
"""

from pacs.dicomweb.routes import dicomweb_routes, error_handlers

__all__ = ["dicomweb_routes", "error_handlers"]
