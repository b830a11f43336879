"""The HTTP front end (Starlette). DICOMweb, WADO-URI and the viewer mount here."""

from pacs.http.app import create_http_app

__all__ = ["create_http_app"]
