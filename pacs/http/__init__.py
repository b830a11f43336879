"""The HTTP front end (Starlette): ``app`` (the application), ``auth`` (who is calling),
``viewer``. DICOMweb and WADO-URI (``pacs.dicomweb``) mount in the application.

Nothing is imported here: ``pacs.dicomweb`` uses ``pacs.http.auth`` while
``pacs.http.app`` uses ``pacs.dicomweb``.
"""
